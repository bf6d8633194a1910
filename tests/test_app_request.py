"""Request: parsing the request URL into the attributes route handlers use."""

from __future__ import annotations

from typing import Any

import pytest

from jetforce import Request
from jetforce.environ import ServerIdentity, build_environ


def environ_for(url: str) -> dict[str, Any]:
    return build_environ(url, ServerIdentity("localhost", 1965), "127.0.0.1", None)


@pytest.mark.parametrize(
    "url, expected",
    [
        pytest.param(
            "gemini://localhost/",
            {"scheme": "gemini", "hostname": "localhost", "port": None, "path": "/", "params": "", "query": "", "fragment": ""},
            id="root",
        ),
        pytest.param(
            "gemini://localhost",
            {"path": ""},
            id="no-path",
        ),
        pytest.param(
            "gemini://localhost:1965/a/b",
            {"port": 1965, "path": "/a/b"},
            id="port",
        ),
        pytest.param(
            "gemini://LocalHost./x",
            {"hostname": "localhost"},
            id="host-upper-case-trailing-dot",
        ),
        pytest.param(
            "gemini://café.example/",
            {"hostname": "xn--caf-dma.example"},
            id="host-unicode-to-punycode",
        ),
        pytest.param(
            "gemini://CAFÉ.EXAMPLE/",
            {"hostname": "xn--caf-dma.example"},
            id="host-unicode-upper-case",
        ),
        pytest.param(
            "gemini://[::1]:1966/",
            {"hostname": "::1", "port": 1966},
            id="ipv6-literal",
        ),
        pytest.param(
            "gemini://localhost/caf%C3%A9/a%20b?name%3Dvalue%20x",
            {"path": "/café/a b", "query": "name=value x"},
            id="percent-decoded",
        ),
        pytest.param(
            "gemini://localhost/search?",
            {"path": "/search", "query": ""},
            id="empty-query",
        ),
        pytest.param(
            # urllib splits ";params" off only for the schemes it lists in
            # uses_params, and gemini is not one of them.
            "gemini://localhost/file;type=a",
            {"path": "/file;type=a", "params": ""},
            id="semicolon-in-gemini-path",
        ),
        pytest.param(
            "https://example.org/file;type=a",
            {"path": "/file", "params": "type=a"},
            id="params-in-https-url",
        ),
        pytest.param(
            "https://user@example.org/",
            {"scheme": "https", "hostname": "example.org"},
            id="userinfo-allowed-in-other-scheme",
        ),
        pytest.param(
            "https://example.org/page#top",
            {"scheme": "https", "hostname": "example.org", "fragment": "top"},
            id="other-scheme-with-fragment",
        ),
    ],
)
def test_request_attributes(url: str, expected: dict[str, Any]) -> None:
    request = Request(environ_for(url))

    for name, value in expected.items():
        assert getattr(request, name) == value, name


def test_request_keeps_environ_and_url() -> None:
    environ = environ_for("gemini://localhost/a%20b")
    request = Request(environ)

    assert request.environ is environ
    assert request.url == "gemini://localhost/a%20b"
    assert request.environ["QUERY_STRING"] == ""


def test_request_query_string_stays_encoded_in_environ() -> None:
    request = Request(environ_for("gemini://localhost/?a%20b"))

    assert request.query == "a b"
    assert request.environ["QUERY_STRING"] == "a%20b"


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("/relative/path", id="no-scheme-no-host"),
        pytest.param("localhost/path", id="no-scheme"),
        pytest.param("gemini:///path", id="empty-host"),
        pytest.param("gemini:path", id="no-authority"),
        pytest.param("gemini://user@localhost/", id="userinfo"),
        pytest.param("gemini://@localhost/", id="empty-userinfo"),
        pytest.param("gemini://user:secret@localhost/", id="userinfo-password"),
        pytest.param("gemini://localhost:port/", id="port-not-a-number"),
        pytest.param("gemini://localhost:70000/", id="port-out-of-range"),
        pytest.param("", id="empty"),
    ],
)
def test_request_invalid_url_raises_value_error(url: str) -> None:
    with pytest.raises(ValueError):
        Request(environ_for(url))
