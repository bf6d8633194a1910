"""CompositeApplication: one application per hostname."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred

from jetforce import CompositeApplication, JetforceApplication, Request, Response, Status
from jetforce.environ import ServerIdentity, build_environ

SERVER = ServerIdentity("localhost", 1965)


def call_app(app: Any, url: str) -> tuple[int, str, bytes]:
    statuses: list[tuple[int, str]] = []
    body = bytearray()
    for chunk in app(build_environ(url, SERVER, "127.0.0.1", None), lambda status, meta: statuses.append((status, meta))):
        assert not isinstance(chunk, Deferred)
        if chunk:
            body += chunk.encode() if isinstance(chunk, str) else chunk
    status, meta = statuses[-1]
    return status, meta, bytes(body)


def named_app(name: str) -> JetforceApplication:
    """An application whose root page names it and the HOSTNAME it was given."""
    app = JetforceApplication()

    @app.route("")
    def index(request: Request) -> Response:
        return Response(Status.SUCCESS, "text/plain", f"{name} {request.environ['HOSTNAME']}")

    return app


@pytest.fixture
def composite() -> CompositeApplication:
    return CompositeApplication(
        {
            "apple.example": named_app("apple"),
            "Banana.Example": named_app("banana"),
            "café.example": named_app("café"),
            None: named_app("default"),
        }
    )


@pytest.mark.parametrize(
    "url, expected_body",
    [
        pytest.param("gemini://apple.example/", b"apple apple.example", id="exact-host"),
        pytest.param("gemini://APPLE.example/", b"apple apple.example", id="host-any-case"),
        pytest.param("gemini://banana.example/", b"banana banana.example", id="key-any-case"),
        pytest.param("gemini://apple.example:1965/", b"apple apple.example", id="with-server-port"),
        pytest.param("gemini://xn--caf-dma.example/", "café xn--caf-dma.example".encode(), id="punycode-url-unicode-key"),
        pytest.param("gemini://CAFÉ.example/", "café xn--caf-dma.example".encode(), id="unicode-url"),
        pytest.param("gemini://localhost/", b"default localhost", id="server-host-falls-back"),
        pytest.param("gemini://cherry.example/", b"default cherry.example", id="unknown-host-falls-back"),
    ],
)
def test_composite_routes_by_host(composite: CompositeApplication, url: str, expected_body: bytes) -> None:
    status, _, body = call_app(composite, url)

    assert status == Status.SUCCESS
    assert body == expected_body


def test_composite_without_default_answers_53() -> None:
    composite = CompositeApplication({"apple.example": named_app("apple")})

    status, _, body = call_app(composite, "gemini://cherry.example/")

    assert status == Status.PROXY_REQUEST_REFUSED
    assert body == b""


def test_composite_invalid_url_answers_59(composite: CompositeApplication) -> None:
    assert call_app(composite, "gemini://user@apple.example/")[0] == Status.BAD_REQUEST


def test_composite_chosen_app_still_refuses_other_scheme(composite: CompositeApplication) -> None:
    assert call_app(composite, "https://apple.example/")[0] == Status.PROXY_REQUEST_REFUSED


def test_composite_passes_plain_callables() -> None:
    def raw_app(environ: dict[str, Any], send_status: Any) -> list[str]:
        send_status(Status.SUCCESS, "text/plain")
        return [environ["HOSTNAME"], " ", environ["SERVER_NAME"]]

    composite = CompositeApplication({"raw.example": raw_app})

    # HOSTNAME becomes the virtual host; SERVER_NAME stays the server's own.
    assert call_app(composite, "gemini://raw.example/")[2] == b"raw.example localhost"


def test_composite_does_not_change_caller_environ() -> None:
    environ = build_environ("gemini://apple.example/", SERVER, "127.0.0.1", None)
    composite = CompositeApplication({"apple.example": named_app("apple")})

    list(composite(environ, lambda status, meta: None))

    assert environ["HOSTNAME"] == "localhost"
