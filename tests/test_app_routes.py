"""RoutePattern and JetforceApplication: which handler responds to which URL."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from jetforce import JetforceApplication, RateLimiter, Request, Response, RoutePattern, Status
from jetforce.environ import ServerIdentity, build_environ

SERVER = ServerIdentity("localhost", 1965)


def environ_for(url: str, server: ServerIdentity = SERVER, remote_addr: str = "127.0.0.1") -> dict[str, Any]:
    return build_environ(url, server, remote_addr, None)


def call_app(app: Any, url: str, **environ_options: Any) -> tuple[int, str, bytes]:
    """Run an application to the end and return its last status, meta and body."""
    statuses: list[tuple[int, str]] = []
    body = bytearray()
    for chunk in app(environ_for(url, **environ_options), lambda status, meta: statuses.append((status, meta))):
        if isinstance(chunk, Deferred):
            fired: list[Any] = []
            chunk.addCallback(fired.append)
            assert fired, "a Deferred chunk that has not fired"
            chunk = fired[0]
        if chunk:
            body += chunk.encode() if isinstance(chunk, str) else chunk
    status, meta = statuses[-1]
    return status, meta, bytes(body)


# RoutePattern.match, one URL at a time.


@pytest.mark.parametrize(
    "pattern, url, matches",
    [
        # The path is a regular expression over the whole decoded path.
        pytest.param(RoutePattern("/hello"), "gemini://localhost/hello", True, id="path-exact"),
        pytest.param(RoutePattern("/hello"), "gemini://localhost/hello/world", False, id="path-whole-match-only"),
        pytest.param(RoutePattern("/hello"), "gemini://localhost/hell", False, id="path-prefix-no-match"),
        pytest.param(RoutePattern("/hello"), "gemini://localhost/hello?x=1", True, id="path-ignores-query"),
        pytest.param(RoutePattern("/café"), "gemini://localhost/caf%C3%A9", True, id="path-percent-decoded"),
        pytest.param(RoutePattern("/a b"), "gemini://localhost/a%20b", True, id="path-decoded-space"),
        pytest.param(RoutePattern(), "gemini://localhost", True, id="default-path-matches-empty"),
        pytest.param(RoutePattern(), "gemini://localhost/any/thing", True, id="default-path-matches-all"),
        pytest.param(RoutePattern(""), "gemini://localhost/", True, id="empty-path-matches-root"),
        # Trailing slashes.
        pytest.param(RoutePattern("/dir"), "gemini://localhost/dir/", True, id="trailing-slash-stripped"),
        pytest.param(RoutePattern("/dir"), "gemini://localhost/dir//", True, id="trailing-slashes-stripped"),
        pytest.param(
            RoutePattern("/dir", strict_trailing_slash=True), "gemini://localhost/dir/", False, id="strict-slash-differs"
        ),
        pytest.param(
            RoutePattern("/dir/", strict_trailing_slash=True), "gemini://localhost/dir/", True, id="strict-slash-kept"
        ),
        pytest.param(
            RoutePattern("/dir/", strict_trailing_slash=True), "gemini://localhost/dir", False, id="strict-slash-missing"
        ),
        # Hostname: the server's by default, compared in lower-case punycode.
        pytest.param(RoutePattern(), "gemini://LOCALHOST/", True, id="server-host-any-case"),
        pytest.param(RoutePattern(), "gemini://example.org/", False, id="other-host"),
        pytest.param(RoutePattern(hostname="Example.ORG"), "gemini://example.org/", True, id="named-host-any-case"),
        pytest.param(RoutePattern(hostname="example.org"), "gemini://localhost/", False, id="named-host-not-server"),
        pytest.param(
            RoutePattern(hostname="café.example"), "gemini://xn--caf-dma.example/", True, id="unicode-route-punycode-url"
        ),
        pytest.param(
            RoutePattern(hostname="xn--caf-dma.example"), "gemini://CAFÉ.example/", True, id="punycode-route-unicode-url"
        ),
        pytest.param(RoutePattern(strict_hostname=False), "gemini://example.org/", True, id="any-host-when-not-strict"),
        # Port: a URL without one always matches; another port only when not strict.
        pytest.param(RoutePattern(), "gemini://localhost:1965/", True, id="server-port"),
        pytest.param(RoutePattern(), "gemini://localhost:1966/", False, id="other-port"),
        pytest.param(RoutePattern(strict_port=False), "gemini://localhost:1966/", True, id="any-port-when-not-strict"),
        # Scheme.
        pytest.param(RoutePattern(), "https://localhost/", False, id="other-scheme"),
        pytest.param(RoutePattern(scheme="https"), "https://localhost/", True, id="named-scheme"),
        pytest.param(RoutePattern(scheme="https"), "gemini://localhost/", False, id="named-scheme-not-gemini"),
        pytest.param(RoutePattern(scheme=None), "gopher://localhost/", True, id="no-scheme-matches-any"),
    ],
)
def test_route_pattern_match(pattern: RoutePattern, url: str, matches: bool) -> None:
    match = pattern.match(Request(environ_for(url)))
    assert (match is not None) == matches


def test_route_pattern_match_returns_re_match_with_groups() -> None:
    pattern = RoutePattern(r"/user/(?P<name>[a-z]+)")

    match = pattern.match(Request(environ_for("gemini://localhost/user/alice")))

    assert match is not None
    assert match.groupdict() == {"name": "alice"}


def test_route_pattern_uses_server_port_from_environ() -> None:
    request = Request(environ_for("gemini://localhost:1966/", server=ServerIdentity("localhost", 1966)))
    assert RoutePattern().match(request) is not None


def test_route_pattern_default_arguments() -> None:
    pattern = RoutePattern()

    assert pattern.path == ".*"
    assert pattern.scheme == "gemini"
    assert pattern.hostname is None
    assert pattern.strict_hostname is True
    assert pattern.strict_port is True
    assert pattern.strict_trailing_slash is False


def test_route_pattern_invalid_hostname_raises_when_made() -> None:
    with pytest.raises(ValueError):
        RoutePattern(hostname="bad\u200d.example")


# JetforceApplication.


def test_route_decorator_registers_and_returns_handler() -> None:
    app = JetforceApplication()

    def index(request: Request) -> Response:
        return Response(Status.SUCCESS, "text/gemini", "home")

    decorated = app.route("")(index)

    assert decorated is index
    assert len(app.routes) == 1
    pattern, handler = app.routes[0]
    assert isinstance(pattern, RoutePattern)
    assert handler is index
    assert call_app(app, "gemini://localhost/") == (20, "text/gemini", b"home")


def test_route_added_later_wins() -> None:
    app = JetforceApplication()

    @app.route(".*")
    def catch_all(request: Request) -> Response:
        return Response(Status.SUCCESS, "text/plain", "catch-all")

    @app.route("/special")
    def special(request: Request) -> Response:
        return Response(Status.SUCCESS, "text/plain", "special")

    assert call_app(app, "gemini://localhost/special")[2] == b"special"
    assert call_app(app, "gemini://localhost/other")[2] == b"catch-all"


def test_route_named_groups_become_keyword_arguments() -> None:
    app = JetforceApplication()
    received: dict[str, Any] = {}

    @app.route(r"/(?:archive)/(?P<year>\d{4})/(?P<slug>[a-z-]+)(?:/(?P<page>\d+))?")
    def post(request: Request, year: str, slug: str, page: str | None) -> Response:
        received.update(year=year, slug=slug, page=page)
        return Response(Status.SUCCESS, "text/plain", "ok")

    call_app(app, "gemini://localhost/archive/2020/first-post")

    assert received == {"year": "2020", "slug": "first-post", "page": None}


def test_route_decorator_passes_pattern_options() -> None:
    app = JetforceApplication()

    @app.route("/proxy", scheme="https", hostname="example.org", strict_hostname=False, strict_port=False, strict_trailing_slash=True)
    def proxy(request: Request) -> Response:
        return Response(Status.SUCCESS, "text/plain", "proxied")

    pattern, _ = app.routes[0]
    assert pattern == RoutePattern("/proxy", "https", "example.org", False, False, True)


def test_route_claims_proxy_request() -> None:
    app = JetforceApplication()

    @app.route(scheme="https", strict_hostname=False)
    def proxy(request: Request) -> Response:
        return Response(Status.SUCCESS, "text/plain", request.hostname)

    assert call_app(app, "https://example.org/page") == (20, "text/plain", b"example.org")


def test_routes_list_can_be_extended_directly() -> None:
    app = JetforceApplication()
    app.routes.append((RoutePattern("/direct"), lambda request: Response(Status.SUCCESS, "text/plain", "direct")))

    assert call_app(app, "gemini://localhost/direct")[2] == b"direct"


@pytest.mark.parametrize(
    "url, expected_status",
    [
        pytest.param("gemini://localhost/nothing-here", Status.PERMANENT_FAILURE, id="unmatched-path"),
        pytest.param("gemini://example.org/", Status.PROXY_REQUEST_REFUSED, id="other-host"),
        pytest.param("gemini://localhost:1966/", Status.PROXY_REQUEST_REFUSED, id="other-port"),
        pytest.param("https://localhost/", Status.PROXY_REQUEST_REFUSED, id="other-scheme"),
    ],
)
def test_unmatched_request(url: str, expected_status: Status) -> None:
    app = JetforceApplication()
    app.route("/only")(lambda request: Response(Status.SUCCESS, "text/plain"))

    status, _, body = call_app(app, url)

    assert status == expected_status
    assert body == b""


def test_default_callback_answers_50_not_found() -> None:
    status, meta, _ = call_app(JetforceApplication(), "gemini://localhost/missing")
    assert (status, meta) == (50, "Not Found")


def test_default_callback_can_be_overridden() -> None:
    class FriendlyApplication(JetforceApplication):
        def default_callback(self, request: Request, **kwargs: Any) -> Response:
            return Response(Status.NOT_FOUND, f"No page at {request.path}")

    assert call_app(FriendlyApplication(), "gemini://localhost/missing")[:2] == (51, "No page at /missing")


def test_request_class_can_be_overridden() -> None:
    class SessionRequest(Request):
        def __init__(self, environ: dict[str, Any]) -> None:
            super().__init__(environ)
            self.user = environ.get("REMOTE_USER") or "anonymous"

    class SessionApplication(JetforceApplication):
        request_class = SessionRequest

    app = SessionApplication()

    @app.route("")
    def index(request: SessionRequest) -> Response:
        return Response(Status.SUCCESS, "text/plain", f"{type(request).__name__} {request.user}")

    assert call_app(app, "gemini://localhost/")[2] == b"SessionRequest anonymous"


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("/relative", id="no-scheme"),
        pytest.param("gemini:///path", id="no-host"),
        pytest.param("gemini://user@localhost/", id="userinfo"),
    ],
)
def test_unparsable_url_answers_59(url: str) -> None:
    app = JetforceApplication()
    app.route()(lambda request: Response(Status.SUCCESS, "text/plain"))

    status, meta, _ = call_app(app, url)

    assert status == Status.BAD_REQUEST
    assert meta


def test_rate_limiter_runs_before_routing() -> None:
    calls: list[str] = []
    app = JetforceApplication(rate_limiter=RateLimiter("1/m", clock=Clock()))

    @app.route("")
    def index(request: Request) -> Response:
        calls.append(request.path)
        return Response(Status.SUCCESS, "text/plain")

    assert call_app(app, "gemini://localhost/")[0] == Status.SUCCESS
    # Over the limit, neither a handler, the default callback nor the proxy check runs.
    assert call_app(app, "gemini://localhost/")[:2] == (Status.SLOW_DOWN, "60")
    assert call_app(app, "gemini://localhost/missing")[0] == Status.SLOW_DOWN
    assert call_app(app, "gemini://example.org/")[0] == Status.SLOW_DOWN
    assert calls == ["/"]
    # Another client has its own count.
    assert call_app(app, "gemini://localhost/", remote_addr="192.0.2.7")[0] == Status.SUCCESS


def test_application_default_has_no_rate_limiter() -> None:
    app = JetforceApplication()
    assert app.rate_limiter is None
    assert app.routes == []
