"""
The application framework: requests, responses and routing.

An application is a callable `app(environ, send_status)` that returns an
iterable of body chunks (str, bytes, or a Deferred firing with one). It may
call send_status(status, meta) again until the first body byte is written.
The server pulls chunks without blocking the reactor, waits for Deferred
chunks, and cancels the Deferred it waits on when the client disconnects.

JetforceApplication builds such a callable from route handlers: each
handler takes a Request and returns a Response, a DeferredResponse, or a
Deferred that fires with either. Routes added later are tried first.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlparse

from twisted.internet.defer import Deferred

from ..errors import ServerFault
from ..wire import normalize_hostname
from .ratelimit import RateLimiter

__all__ = [
    "DeferredResponse",
    "EnvironDict",
    "InvalidHandlerResult",
    "JetforceApplication",
    "RateLimiter",
    "Request",
    "Response",
    "RoutePattern",
    "Status",
]

EnvironDict = dict[str, Any]
SendStatus = Callable[[int, str], None]
RouteHandler = Callable[..., Any]


class Status(enum.IntEnum):
    """Gemini response status codes."""

    INPUT = 10
    SENSITIVE_INPUT = 11

    SUCCESS = 20

    REDIRECT_TEMPORARY = 30
    REDIRECT_PERMANENT = 31

    TEMPORARY_FAILURE = 40
    SERVER_UNAVAILABLE = 41
    CGI_ERROR = 42
    PROXY_ERROR = 43
    SLOW_DOWN = 44

    PERMANENT_FAILURE = 50
    NOT_FOUND = 51
    GONE = 52
    PROXY_REQUEST_REFUSED = 53
    BAD_REQUEST = 59

    CLIENT_CERTIFICATE_REQUIRED = 60
    CERTIFICATE_NOT_AUTHORISED = 61
    CERTIFICATE_NOT_VALID = 62


class Request:
    """
    A parsed request URL with its environment.

    hostname is lower-case punycode; path, params, query and fragment are
    percent-decoded. Raises ValueError for a URL without scheme or host, a
    gemini URL with a userinfo part, an invalid port, or a hostname that
    IDNA cannot encode.
    """

    def __init__(self, environ: EnvironDict) -> None:
        self.environ = environ
        self.url: str = environ["GEMINI_URL"]

        parts = urlparse(self.url)
        if not parts.scheme:
            raise ValueError(f"URL has no scheme: {self.url!r}")
        if not parts.hostname:
            raise ValueError(f"URL has no host: {self.url!r}")
        if parts.scheme == "gemini" and "@" in parts.netloc:
            raise ValueError(f"gemini URL must not contain a userinfo part: {self.url!r}")

        self.scheme: str = parts.scheme
        self.hostname: str = normalize_hostname(parts.hostname)
        self.port: int | None = parts.port
        self.path: str = unquote(parts.path)
        self.params: str = unquote(parts.params)
        self.query: str = unquote(parts.query)
        self.fragment: str = unquote(parts.fragment)

    def __repr__(self) -> str:
        return f"<Request {self.url!r}>"


@dataclass
class Response:
    """A response header and its body: None, str, bytes, a Deferred, or an iterable of those."""

    status: int
    meta: str
    body: Any = None


@dataclass
class DeferredResponse:
    """A response whose header comes later, from send_status: a Deferred firing (status, meta)."""

    send_status: Deferred[tuple[int, str]]
    body: Any = None


@dataclass
class RoutePattern:
    """
    A rule that a request's URL must meet for a route handler to run.

    path is a regular expression matched against the whole decoded path,
    with trailing slashes stripped unless strict_trailing_slash is set. An
    empty or None scheme matches every scheme. hostname None means the
    server's own hostname (the HOSTNAME environ entry); hostnames compare
    in lower-case punycode. With strict_hostname off, any host matches; with
    strict_port off, any port does. A URL without a port always matches.

    Raises re.error for an invalid path and ValueError for a hostname that
    IDNA cannot encode, when the pattern is made rather than per request.
    """

    path: str = ".*"
    scheme: str | None = "gemini"
    hostname: str | None = None
    strict_hostname: bool = True
    strict_port: bool = True
    strict_trailing_slash: bool = False
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _hostname: str | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # DOTALL lets ".*" match a path with a decoded %0A in it too.
        self._regex = re.compile(self.path, re.DOTALL)
        self._hostname = None if self.hostname is None else normalize_hostname(self.hostname)

    def match(self, request: Request) -> re.Match[str] | None:
        """Return the match of path against the request's path, or None when any rule fails."""
        if self.scheme and request.scheme != self.scheme:
            return None

        if self.strict_hostname:
            expected = self._hostname
            if expected is None:
                expected = normalize_hostname(request.environ.get("HOSTNAME", ""))
            if request.hostname != expected:
                return None

        if self.strict_port and request.port is not None:
            server_port = request.environ.get("SERVER_PORT")
            if server_port is not None and request.port != int(server_port):
                return None

        path = request.path if self.strict_trailing_slash else request.path.rstrip("/")
        return self._regex.fullmatch(path)


class JetforceApplication:
    """An application made of route handlers, tried from the most recently added."""

    request_class: type[Request] = Request

    def __init__(self, rate_limiter: RateLimiter | None = None) -> None:
        self.rate_limiter = rate_limiter
        self.routes: list[tuple[RoutePattern, RouteHandler]] = []

    def __call__(self, environ: EnvironDict, send_status: SendStatus) -> Iterator[Any]:
        try:
            request = self.request_class(environ)
        except ValueError as error:
            send_status(Status.BAD_REQUEST, f"Invalid URL: {error}"[:200])
            return

        if self.rate_limiter is not None:
            limited = self.rate_limiter.check(request)
            if limited is not None:
                yield from render_response(limited, send_status)
                return

        handler, arguments = self.find_route(request)
        yield from render_response(handler(request, **arguments), send_status, handler)

    def route(
        self,
        path: str = ".*",
        scheme: str | None = "gemini",
        hostname: str | None = None,
        strict_hostname: bool = True,
        strict_port: bool = True,
        strict_trailing_slash: bool = False,
    ) -> Callable[[RouteHandler], RouteHandler]:
        """
        Register the decorated function as the handler of requests matching a RoutePattern.

        The handler is called as handler(request, **named_groups) and returns
        a Response, a DeferredResponse, or a Deferred firing with either. The
        decorator returns the function unchanged.
        """
        pattern = RoutePattern(path, scheme, hostname, strict_hostname, strict_port, strict_trailing_slash)

        def register(handler: RouteHandler) -> RouteHandler:
            self.routes.append((pattern, handler))
            return handler

        return register

    def find_route(self, request: Request) -> tuple[RouteHandler, dict[str, Any]]:
        """Return the handler for request and the keyword arguments from its named groups."""
        for pattern, handler in reversed(self.routes):
            match = pattern.match(request)
            if match is not None:
                return handler, match.groupdict()

        if is_proxy_request(request):
            return refuse_proxy_request, {}
        return self.default_callback, {}

    def default_callback(self, request: Request, **_: Any) -> Response:
        """Return the response to a request for this server that no route matched; subclasses override it."""
        return Response(Status.PERMANENT_FAILURE, "Not Found")


def is_proxy_request(request: Request) -> bool:
    """Tell whether a request names another scheme, host or port than the server's."""
    if request.scheme != "gemini":
        return True
    if request.hostname != normalize_hostname(request.environ.get("HOSTNAME", "")):
        return True
    server_port = request.environ.get("SERVER_PORT")
    return request.port is not None and server_port is not None and request.port != int(server_port)


def refuse_proxy_request(request: Request, **_: Any) -> Response:
    return Response(Status.PROXY_REQUEST_REFUSED, "Proxy request refused")


class InvalidHandlerResult(ServerFault):
    """A route handler returned something other than a Response or a DeferredResponse."""

    # The same status as an exception raised by a handler, because both are
    # faults of the application rather than of the server.
    status = Status.CGI_ERROR


def render_response(response: Any, send_status: SendStatus, handler: RouteHandler | None = None) -> Iterator[Any]:
    """
    Yield the body chunks of a handler's result, sending its status first.

    A Deferred result, and the header Deferred of a DeferredResponse, are
    yielded as chunks that fire with nothing, so the server waits for them
    without blocking and cancels them when the client goes away. Raises
    InvalidHandlerResult, naming handler, for a result of any other type.
    """
    if isinstance(response, Deferred):
        results: list[Any] = []
        yield response.addCallback(_keep_as_empty_chunk, results)
        response = results[0]

    if isinstance(response, DeferredResponse):
        statuses: list[Any] = []
        yield response.send_status.addCallback(_keep_as_empty_chunk, statuses)
        status, meta = statuses[0]
        send_status(status, meta)
    elif isinstance(response, Response):
        send_status(response.status, response.meta)
    else:
        name = getattr(handler, "__qualname__", repr(handler)) if handler is not None else "route handler"
        raise InvalidHandlerResult(
            f"{name} returned {type(response).__name__}, expected a Response or a DeferredResponse"
        )

    body = response.body
    if body is None:
        return
    if isinstance(body, (str, bytes, Deferred)):
        yield body
    else:
        yield from body


def _keep_as_empty_chunk(result: Any, into: list[Any]) -> None:
    into.append(result)
    return None
