"""
The static file server over in-memory TLS: hostile paths, hidden files,
symbolic links, listings, media types and the CGI directory.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

import pytest
from twisted.logger import formatEvent, globalLogPublisher

from jetforce import JetforceApplication, Request, Response, StaticDirectoryApplication, Status

from .harness import connect_memory, make_memory_server

SECRET = b"TOP-SECRET-d41c8e"
HIDDEN_SECRET = b"HIDDEN-SECRET-90b2"
SCRIPT_SOURCE = b"#!/bin/sh\n# SCRIPT-SOURCE-SECRET-5e7a\nprintf '20 text/plain\\r\\nran\\n'\n"


@dataclass
class Site:
    base: Path
    root: Path
    secret: Path
    outside: Path


@dataclass
class Reply:
    header: str
    body: bytes
    raw: bytes

    @property
    def status(self) -> int:
        return int(self.header[:2])


@pytest.fixture
def site(tmp_path: Path) -> Site:
    root = tmp_path / "root"
    root.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "shared.txt").write_text("shared from outside\n")

    (root / "index.gmi").write_text("# Home\n")
    (root / "public.txt").write_text("public\n")
    (root / ".hidden.txt").write_bytes(HIDDEN_SECRET)
    (root / ".git").mkdir()
    (root / ".git" / "config").write_bytes(HIDDEN_SECRET)
    (root / "sub").mkdir()
    (root / "sub" / ".env").write_bytes(HIDDEN_SECRET)
    (root / "sub" / "page.gmi").write_text("# Page\n")
    (root / "sub" / "nested").mkdir()
    (root / ".well-known").mkdir()
    (root / ".well-known" / "security.txt").write_text("Contact: mailto:ops@example.org\n")
    (root / ".well-known" / ".private").write_bytes(HIDDEN_SECRET)
    (root / "cgi-bin").mkdir()
    script = root / "cgi-bin" / "script"
    script.write_bytes(SCRIPT_SOURCE)
    script.chmod(0o755)
    (root / "cgi-bin" / "lost-bit").write_bytes(SCRIPT_SOURCE)
    return Site(tmp_path, root, secret, outside)


def serve(app: StaticDirectoryApplication, path: str) -> Reply:
    server = make_memory_server(app)
    connection = connect_memory(server, f"gemini://localhost{path}\r\n".encode())
    raw = bytes(connection.client.received)
    header, _, body = raw.partition(b"\r\n")
    return Reply(header.decode("utf-8"), body, raw)


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    """Collect the lines logged through twisted.logger's global publisher while the test runs."""
    lines: list[str] = []

    def observe(event: dict) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


# Traversal.

TRAVERSAL_PATHS = [
    "/../secret.txt",
    "/../../secret.txt",
    "/sub/../../secret.txt",
    "/sub/nested/../../../secret.txt",
    "/./../secret.txt",
    "//../secret.txt",
    "/%2e%2e/secret.txt",
    "/%2E%2E/secret.txt",
    "/.%2e/secret.txt",
    "/%2e./secret.txt",
    "/sub/%2e%2e/%2e%2e/secret.txt",
    "/..%2fsecret.txt",
    "/..%2Fsecret.txt",
    "/sub%2F..%2F..%2Fsecret.txt",
    "/%2F..%2Fsecret.txt",
    "/%252e%252e/secret.txt",
    "/..%5csecret.txt",
    "/..%5C..%5Csecret.txt",
    "/..;/secret.txt",
    "/%c0%ae%c0%ae/secret.txt",
    "/%e0%80%ae%e0%80%ae/secret.txt",
    "/%E2%80%A4%E2%80%A4/secret.txt",
    "/public.txt%00",
    "/public.txt%00.gmi",
    "/sub/%00/../../secret.txt",
    "/%ff",
    "/" + "a" * 256,
    "/" + "%C3%A9" * 128,
    "/sub/" + "b" * 300 + "/../../../secret.txt",
]


@pytest.mark.parametrize("path", TRAVERSAL_PATHS)
def test_traversal_is_not_found(site: Site, path: str) -> None:
    reply = serve(StaticDirectoryApplication(site.root), path)

    assert reply.header == "51 Not Found"
    assert SECRET not in reply.raw


def test_absolute_path_stays_below_root(site: Site) -> None:
    app = StaticDirectoryApplication(site.root)

    for path in ("/" + str(site.secret), "/%2F" + str(site.secret).lstrip("/").replace("/", "%2F")):
        reply = serve(app, path)
        assert reply.status == 51
        assert SECRET not in reply.raw


def request_recording_file_access(
    app: StaticDirectoryApplication, path: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[bytes, list[str]]:
    """Send one request and return the response header and every path the os module was called with."""
    server = make_memory_server(app)
    # Loading the server's certificate is not part of the request.
    server.tls_options()
    accessed: list[str] = []

    def recording(function):
        def call(target, *args, **kwargs):
            if isinstance(target, (str, bytes, os.PathLike)):
                accessed.append(os.path.normpath(os.fsdecode(os.fspath(target))))
            return function(target, *args, **kwargs)

        return call

    with monkeypatch.context() as patch:
        for name in ("stat", "lstat", "open", "scandir", "access", "listdir"):
            patch.setattr(os, name, recording(getattr(os, name)))
        connection = connect_memory(server, f"gemini://localhost{path}\r\n".encode())
    return connection.client.header, accessed


@pytest.mark.parametrize("path", TRAVERSAL_PATHS)
def test_traversal_touches_nothing_outside_root(site: Site, path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    app = StaticDirectoryApplication(site.root)

    header, accessed = request_recording_file_access(app, path, monkeypatch)

    assert header == b"51 Not Found"
    assert [name for name in accessed if not name.startswith(str(app.root) + "/")] == []


def test_file_access_recording_sees_served_file(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    app = StaticDirectoryApplication(site.root)

    header, accessed = request_recording_file_access(app, "/public.txt", monkeypatch)

    assert header == b"20 text/plain"
    assert str(app.root / "public.txt") in accessed


# Hidden files.


@pytest.mark.parametrize(
    "path",
    [
        "/.hidden.txt",
        "/%2Ehidden.txt",
        "/.git/config",
        "/.git/",
        "/sub/.env",
        "/sub/nested/../.env",
        "/.well-known/.private",
        "/sub/.well-known/security.txt",
    ],
)
def test_hidden_file_not_served(site: Site, path: str) -> None:
    reply = serve(StaticDirectoryApplication(site.root), path)

    assert reply.status == 51
    assert HIDDEN_SECRET not in reply.raw


def test_well_known_file_served(site: Site) -> None:
    reply = serve(StaticDirectoryApplication(site.root), "/.well-known/security.txt")

    assert reply.header == "20 text/plain"
    assert reply.body == b"Contact: mailto:ops@example.org\n"


def test_well_known_listing_hides_hidden_entries(site: Site) -> None:
    reply = serve(StaticDirectoryApplication(site.root), "/.well-known/")

    assert reply.status == 20
    assert b"security.txt" in reply.body
    assert b".private" not in reply.body


# Symbolic links.


def test_symlink_to_file_outside_root_followed(site: Site) -> None:
    (site.root / "shared.txt").symlink_to(site.outside / "shared.txt")

    reply = serve(StaticDirectoryApplication(site.root), "/shared.txt")

    assert reply.header == "20 text/plain"
    assert reply.body == b"shared from outside\n"


def test_symlink_to_directory_outside_root_followed(site: Site) -> None:
    (site.root / "linked").symlink_to(site.outside, target_is_directory=True)
    app = StaticDirectoryApplication(site.root)

    listing = serve(app, "/linked/")
    file = serve(app, "/linked/shared.txt")

    assert listing.status == 20
    assert b"=> shared.txt shared.txt\n" in listing.body
    assert file.body == b"shared from outside\n"


def test_symlink_to_directory_listed_as_directory(site: Site) -> None:
    (site.root / "sub" / "linked").symlink_to(site.outside, target_is_directory=True)

    reply = serve(StaticDirectoryApplication(site.root), "/sub/")

    assert b"=> linked/ linked/\n" in reply.body


@pytest.mark.parametrize(
    ("name", "target"),
    [("loop", "loop"), ("dangling", "missing.txt"), (".hidden-link", "public.txt")],
)
def test_unusable_symlink_not_found(site: Site, name: str, target: str) -> None:
    (site.root / name).symlink_to(target)

    reply = serve(StaticDirectoryApplication(site.root), "/" + name)

    assert reply.status == 51


def test_symlink_into_cgi_directory_does_not_leak_source(site: Site, log_lines: list[str]) -> None:
    (site.root / "scripts").symlink_to(site.root / "cgi-bin", target_is_directory=True)
    (site.root / "run.txt").symlink_to(site.root / "cgi-bin" / "script")
    app = StaticDirectoryApplication(site.root)

    for path in ("/scripts/lost-bit", "/scripts/script", "/run.txt"):
        reply = serve(app, path)
        assert reply.status == 51, path
        assert b"SCRIPT-SOURCE-SECRET" not in reply.raw
    assert sum("lies in the CGI directory cgi-bin on disk" in line for line in log_lines) == 3


# The CGI directory.


@pytest.mark.parametrize("path", ["/cgi-bin/lost-bit", "/cgi-bin//lost-bit", "/sub/../cgi-bin/lost-bit", "/cgi-bin/lost-bit/x"])
def test_non_executable_cgi_file_not_served(site: Site, path: str, log_lines: list[str]) -> None:
    reply = serve(StaticDirectoryApplication(site.root), path)

    assert reply.header == "51 Not Found"
    assert b"SCRIPT-SOURCE-SECRET" not in reply.raw
    assert any("lost-bit" in line and "not an executable file" in line for line in log_lines)


def test_non_executable_index_in_cgi_directory_not_served(site: Site, log_lines: list[str]) -> None:
    (site.root / "cgi-bin" / "index.gmi").write_bytes(SCRIPT_SOURCE)

    reply = serve(StaticDirectoryApplication(site.root), "/cgi-bin/")

    assert reply.status == 51
    assert b"SCRIPT-SOURCE-SECRET" not in reply.raw
    assert any("index.gmi" in line and "not an executable file" in line for line in log_lines)


def test_cgi_directory_listing_shows_names_only(site: Site) -> None:
    reply = serve(StaticDirectoryApplication(site.root), "/cgi-bin/")

    assert reply.status == 20
    assert b"=> script script\n" in reply.body
    assert b"SCRIPT-SOURCE-SECRET" not in reply.raw


def test_cgi_turned_off_serves_files(site: Site) -> None:
    reply = serve(StaticDirectoryApplication(site.root, cgi_directory=""), "/cgi-bin/lost-bit")

    assert reply.status == 20
    assert reply.body == SCRIPT_SOURCE


def test_cgi_directory_outside_root_rejected(site: Site) -> None:
    with pytest.raises(ValueError, match="below the root"):
        StaticDirectoryApplication(site.root, cgi_directory="../cgi-bin")


# Files, directories and redirects.


def test_directory_without_slash_redirected(site: Site) -> None:
    app = StaticDirectoryApplication(site.root)

    assert serve(app, "/sub").header == "31 gemini://localhost/sub/"
    assert serve(app, "/sub?q=1").header == "31 gemini://localhost/sub/?q=1"


def test_index_file_served_for_directory(site: Site) -> None:
    app = StaticDirectoryApplication(site.root)

    for path in ("", "/", "/sub/../"):
        reply = serve(app, path)
        assert reply.header == "20 text/gemini", path
        assert reply.body == b"# Home\n"


def test_file_with_trailing_slash_not_found(site: Site) -> None:
    reply = serve(StaticDirectoryApplication(site.root), "/public.txt/")

    assert reply.status == 51


def test_missing_file_not_found(site: Site) -> None:
    assert serve(StaticDirectoryApplication(site.root), "/missing.txt").header == "51 Not Found"


def test_fifo_not_found_without_blocking(site: Site) -> None:
    os.mkfifo(site.root / "pipe")

    assert serve(StaticDirectoryApplication(site.root), "/pipe").status == 51


def test_other_host_is_proxy_request(site: Site) -> None:
    server = make_memory_server(StaticDirectoryApplication(site.root))
    connection = connect_memory(server, b"gemini://example.org/public.txt\r\n")

    assert connection.client.header.startswith(b"53 ")


# Media types.


@pytest.mark.parametrize(
    ("name", "mimetype"),
    [
        ("page.gmi", "text/gemini"),
        ("page.gemini", "text/gemini"),
        ("PAGE.GMI", "text/gemini"),
        ("notes.txt", "text/plain"),
        ("image.png", "image/png"),
        ("archive.tar.gz", "application/gzip"),
        ("archive.tgz", "application/gzip"),
        ("notes.txt.gz", "application/gzip"),
        ("data.gz", "application/gzip"),
        ("data.bz2", "application/x-bzip2"),
        ("data.tar.bz2", "application/x-bzip2"),
        ("data.xz", "application/x-xz"),
        ("data.unknownextension", "application/octet-stream"),
        ("README", "application/octet-stream"),
    ],
)
def test_media_type_of_served_file(site: Site, name: str, mimetype: str) -> None:
    (site.root / name).write_bytes(b"content")

    reply = serve(StaticDirectoryApplication(site.root), "/" + name)

    assert reply.header == f"20 {mimetype}"
    assert reply.body == b"content"


def test_default_lang_added_to_gemini_only(site: Site) -> None:
    app = StaticDirectoryApplication(site.root, default_lang="fr")

    assert serve(app, "/sub/page.gmi").header == "20 text/gemini; lang=fr"
    assert serve(app, "/").header == "20 text/gemini; lang=fr"
    assert serve(app, "/sub/").header == "20 text/gemini; lang=fr"
    assert serve(app, "/public.txt").header == "20 text/plain"


# Listings.

ENCODED_NAMES = ["a b.txt", "hash#tag.txt", "what?.txt", "100%.txt", "café.gmi", "日本語.txt", "plus+sign.txt", "colon:name.txt"]


@pytest.fixture
def listed(tmp_path: Path) -> Path:
    root = tmp_path / "listed"
    root.mkdir()
    for name in ENCODED_NAMES:
        (root / name).write_text(f"content of {name}\n")
    (root / "dir with space").mkdir()
    (root / "dir with space" / "inner.txt").write_text("inner\n")
    (root / ".hidden").write_text("hidden\n")
    (root / ".hidden-dir").mkdir()
    return root


def listing_links(body: bytes) -> list[tuple[str, str]]:
    links = []
    for line in body.decode("utf-8").splitlines():
        if line.startswith("=> "):
            url, _, label = line[3:].partition(" ")
            links.append((url, label))
    return links


def test_listing_encodes_names_and_links_work(listed: Path) -> None:
    app = StaticDirectoryApplication(listed)
    listing = serve(app, "/")

    links = dict(listing_links(listing.body))
    for name in ENCODED_NAMES:
        url = next(link for link, label in links.items() if label == name)
        assert re.fullmatch(r"[A-Za-z0-9%._~-]+", url), url
        reply = serve(app, urljoin("/", url))
        assert reply.status == 20, name
        assert reply.body == f"content of {name}\n".encode()


def test_listing_marks_directories_with_slash(listed: Path) -> None:
    app = StaticDirectoryApplication(listed)

    links = listing_links(serve(app, "/").body)

    assert ("dir%20with%20space/", "dir with space/") in links
    assert serve(app, "/dir%20with%20space/inner.txt").body == b"inner\n"


def test_listing_leaves_out_hidden_entries(listed: Path) -> None:
    body = serve(StaticDirectoryApplication(listed), "/").body

    assert b".hidden" not in body


def test_listing_is_sorted_with_heading(listed: Path) -> None:
    body = serve(StaticDirectoryApplication(listed), "/").body

    assert body.startswith(b"# Directory listing of /\n\n")
    labels = [label.rstrip("/") for _, label in listing_links(body)]
    assert labels == sorted(labels)
    assert b"=> ../" not in body


def test_subdirectory_listing_has_parent_link(listed: Path) -> None:
    body = serve(StaticDirectoryApplication(listed), "/dir%20with%20space/").body

    assert body.startswith(b"# Directory listing of /dir with space/\n\n=> ../ ..\n")


def test_listing_escapes_control_characters_in_names(listed: Path) -> None:
    (listed / "evil\n=> about:blank injected").write_text("x")
    (listed / "heading\r\n# injected").write_text("x")

    body = serve(StaticDirectoryApplication(listed), "/").body

    lines = body.split(b"\n")
    assert not any(line.startswith(b"=> about:blank") for line in lines)
    assert not any(line.startswith(b"# injected") for line in lines)
    assert b"=> evil%0A%3D%3E%20about%3Ablank%20injected evil\\x0a=> about:blank injected\n" in body
    assert b"=> heading%0D%0A%23%20injected heading\\x0d\\x0a# injected\n" in body


def test_listing_skips_names_that_are_not_utf8(listed: Path) -> None:
    os.close(os.open(os.fsencode(listed) + b"/bad\xff.txt", os.O_CREAT | os.O_WRONLY, 0o644))

    reply = serve(StaticDirectoryApplication(listed), "/")

    assert reply.status == 20
    assert b"bad" not in reply.body
    assert b"=> a%20b.txt a b.txt\n" in reply.body


def test_listing_of_large_directory_comes_in_chunks(tmp_path: Path) -> None:
    for number in range(2000):
        (tmp_path / f"file-{number:05d}-{'x' * 20}.txt").write_text("")
    app = StaticDirectoryApplication(tmp_path)

    chunks = list(app.list_directory("/", tmp_path))

    assert len(chunks) > 1
    assert "".join(chunks).count("\n=> ") == 2000


def test_file_name_with_encoded_newline_served(site: Site) -> None:
    (site.root / "line\nbreak.txt").write_text("two lines\n")

    reply = serve(StaticDirectoryApplication(site.root), "/line%0Abreak.txt")

    assert reply.header == "20 text/plain"
    assert reply.body == b"two lines\n"


def test_default_route_pattern_matches_encoded_newline() -> None:
    app = JetforceApplication()

    @app.route()
    def any_path(request: Request) -> Response:
        return Response(Status.SUCCESS, "text/plain", "matched")

    connection = connect_memory(make_memory_server(app), b"gemini://localhost/line%0Abreak\r\n")

    assert connection.client.header == b"20 text/plain"
