"""
Errors that carry the Gemini status to respond with.

Every error raised while reading a request or building a response derives
from GeminiError, so the protocol maps an error to a response in one place:
the status and meta come from the exception itself. Client faults (the
request is at fault) and server faults (an application produced something
that cannot go on the wire) are kept apart because the server logs the
second kind as a fault of its own.
"""

from __future__ import annotations

# Status codes are written out here instead of importing Status from
# jetforce.app.base, so that this module stays at the bottom of the import
# graph.
_BAD_REQUEST = 59
_NOT_FOUND = 51
_PROXY_REQUEST_REFUSED = 53
_TEMPORARY_FAILURE = 40
_CGI_ERROR = 42


class GeminiError(Exception):
    """An error whose response is a Gemini status and a meta line."""

    status: int = _TEMPORARY_FAILURE

    def __init__(self, meta: str) -> None:
        super().__init__(meta)
        self.meta = meta


class RequestError(GeminiError):
    """The request sent by the client is at fault."""


class BadRequest(RequestError):
    status = _BAD_REQUEST


class RequestTooLong(BadRequest):
    pass


class NotFound(RequestError):
    status = _NOT_FOUND


class ProxyRequestRefused(RequestError):
    status = _PROXY_REQUEST_REFUSED


class ServerFault(GeminiError):
    """An application or CGI script produced a response that cannot be sent."""

    # The meta sent to the client. The exception's own message names the
    # fault for the log and may hold details the client should not see.
    public_meta = "Server error: invalid response from application"


class InvalidResponseHeader(ServerFault):
    """A status or meta that would make a malformed header line."""


class CGIError(ServerFault):
    status = _CGI_ERROR
    public_meta = "CGI error"
