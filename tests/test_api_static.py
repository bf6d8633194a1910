"""StaticDirectoryApplication's public methods and attributes, as subclasses use them."""

from __future__ import annotations

import mimetypes
import os
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred

from jetforce import JetforceApplication, RateLimiter, Request, Response, Status, StaticDirectoryApplication
from jetforce.environ import ServerIdentity, build_environ


def call_app(app: Any, url: str) -> tuple[int, str, bytes]:
    statuses: list[tuple[int, str]] = []
    body = bytearray()
    environ = build_environ(url, ServerIdentity("localhost", 1965), "127.0.0.1", None)
    for chunk in app(environ, lambda status, meta: statuses.append((status, meta))):
        assert not isinstance(chunk, Deferred)
        if chunk:
            body += chunk.encode() if isinstance(chunk, str) else chunk
    status, meta = statuses[-1]
    return status, meta, bytes(body)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "index.gmi").write_text("# Home\n")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("a")
    (tmp_path / "notes" / "b c.gmi").write_text("b")
    (tmp_path / "notes" / ".hidden").write_text("h")
    (tmp_path / "drawing.xyz").write_text("<xyz/>")
    return tmp_path


def test_constructor_positional_arguments(root: Path) -> None:
    limiter = RateLimiter("10/m")
    app = StaticDirectoryApplication(str(root), "home.gmi", "scripts", "en", limiter)

    assert isinstance(app, JetforceApplication)
    assert app.root == root.resolve()
    assert app.index_file == "home.gmi"
    assert app.cgi_directory == "scripts"
    assert app.default_lang == "en"
    assert app.rate_limiter is limiter


def test_root_is_resolved_path(root: Path) -> None:
    relative = os.path.relpath(root / "notes" / "..")
    app = StaticDirectoryApplication(relative)

    assert isinstance(app.root, Path)
    assert app.root == root.resolve()
    assert app.root.is_absolute()


def test_catch_all_route_is_serve_static_file(root: Path) -> None:
    app = StaticDirectoryApplication(root)

    pattern, handler = app.routes[0]

    assert handler == app.serve_static_file
    assert call_app(app, "gemini://localhost/")[:2] == (20, "text/gemini")


def test_routes_added_later_win_over_static_files(root: Path) -> None:
    app = StaticDirectoryApplication(root)

    @app.route("/notes/a.txt")
    def replaced(request: Request) -> Response:
        return Response(Status.SUCCESS, "text/plain", "from a route")

    assert call_app(app, "gemini://localhost/notes/a.txt")[2] == b"from a route"
    assert call_app(app, "gemini://localhost/notes/b%20c.gmi")[2] == b"b"


def test_serve_static_file_called_from_route(root: Path) -> None:
    app = StaticDirectoryApplication(root)

    @app.route("/latest")
    def latest(request: Request) -> Response:
        # A route can hand a rewritten request to the static server.
        environ = {**request.environ, "GEMINI_URL": "gemini://localhost/notes/a.txt"}
        return app.serve_static_file(Request(environ))

    assert call_app(app, "gemini://localhost/latest") == (20, "text/plain", b"a")


def test_mimetypes_can_be_extended(root: Path) -> None:
    app = StaticDirectoryApplication(root)
    assert isinstance(app.mimetypes, mimetypes.MimeTypes)

    app.mimetypes.add_type("application/x-drawing", ".xyz")

    assert app.guess_mimetype("drawing.xyz") == "application/x-drawing"
    assert call_app(app, "gemini://localhost/drawing.xyz")[1] == "application/x-drawing"


@pytest.mark.parametrize(
    "name, expected",
    [
        ("page.gmi", "text/gemini"),
        ("page.gemini", "text/gemini"),
        ("archive.tar.gz", "application/gzip"),
        ("no-extension", "application/octet-stream"),
    ],
)
def test_guess_mimetype(root: Path, name: str, expected: str) -> None:
    assert StaticDirectoryApplication(root).guess_mimetype(name) == expected


def test_guess_mimetype_override_applies_to_served_files(root: Path) -> None:
    class PlainTextApplication(StaticDirectoryApplication):
        def guess_mimetype(self, name: str) -> str:
            return "text/plain; charset=utf-8"

    assert call_app(PlainTextApplication(root), "gemini://localhost/drawing.xyz")[1] == "text/plain; charset=utf-8"


@pytest.mark.parametrize(
    "default_lang, meta, expected",
    [
        (None, "text/gemini", "text/gemini"),
        ("en", "text/gemini", "text/gemini; lang=en"),
        ("en", "text/plain", "text/plain"),
    ],
)
def test_add_extra_parameters(root: Path, default_lang: str | None, meta: str, expected: str) -> None:
    app = StaticDirectoryApplication(root, default_lang=default_lang)
    assert app.add_extra_parameters(meta) == expected


def test_load_file_yields_bytes(root: Path) -> None:
    app = StaticDirectoryApplication(root)

    chunks = list(app.load_file(root / "notes" / "a.txt"))

    assert chunks == [b"a"]


def test_list_directory_yields_gemini_lines(root: Path) -> None:
    app = StaticDirectoryApplication(root)

    listing = "".join(app.list_directory("/notes/", root / "notes"))

    assert "=> a.txt a.txt\n" in listing
    assert "=> b%20c.gmi b c.gmi\n" in listing
    assert ".hidden" not in listing


def test_run_cgi_script_signature(root: Path) -> None:
    import inspect

    parameters = list(inspect.signature(StaticDirectoryApplication(root).run_cgi_script).parameters)
    assert parameters[:2] == ["path", "environ"]
