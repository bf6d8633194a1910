"""
The Gemini wire format, without I/O.

A request is one absolute URL in UTF-8, at most MAX_REQUEST_BYTES long,
ended by CRLF. A response header is two digits, a space, a meta line of at
most MAX_META_BYTES, and CRLF. RequestLineReader takes bytes as they arrive
and returns the URL once the line is complete. The format and parse
functions for response headers take and return plain values. Every fault
raises an error from jetforce.errors that carries the status to respond with.
"""

from __future__ import annotations

import re
from urllib.parse import SplitResult, urlsplit

import idna

from .errors import BadRequest, InvalidResponseHeader, RequestTooLong

# Gemini specification: "The URL MUST NOT exceed 1024 bytes", CRLF excluded.
MAX_REQUEST_BYTES = 1024

# Gemini specification: the meta line of a response header is at most 1024
# bytes of UTF-8.
MAX_META_BYTES = 1024

# Statuses are two digits. The first digit of every defined status lies in
# 1-6, so anything outside 10-69 cannot be understood by a client.
MIN_STATUS = 10
MAX_STATUS = 69

CRLF = b"\r\n"

# C0 control characters and DEL never appear in a URL (RFC 3986 section 2)
# and must not appear in a header line, where they could end it early.
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")

# A CGI header line may end with LF or CRLF. Its meta is checked like any
# other, so the cap on what is buffered while waiting for the end of the
# line is the longest valid header: two digits, a space, the meta and CRLF.
MAX_HEADER_LINE_BYTES = 2 + 1 + MAX_META_BYTES + len(CRLF)


class RequestLineReader:
    """
    Buffer of the bytes received so far, until a complete request line.

    feed() returns None while the line is incomplete and raises
    RequestTooLong as soon as more than MAX_REQUEST_BYTES have arrived
    without a CRLF, however much more the client goes on to send.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> str | None:
        """Add received bytes; return the request URL once the line is complete."""
        # Only the new bytes and the one before them can complete a CRLF.
        search_from = max(len(self._buffer) - 1, 0)
        self._buffer += data

        end = self._buffer.find(CRLF, search_from)
        if end == -1:
            self._check_incomplete_line()
            return None

        if end > MAX_REQUEST_BYTES:
            raise RequestTooLong(f"Request is longer than {MAX_REQUEST_BYTES} bytes")
        line = bytes(self._buffer[:end])
        return parse_request_line(line)

    def preview(self) -> str:
        """Return the start of the received line as text, for a log line about a rejected request."""
        line = bytes(self._buffer[:MAX_REQUEST_BYTES]).split(CRLF, 1)[0]
        return line.decode("utf-8", "backslashreplace")

    def _check_incomplete_line(self) -> None:
        # A trailing CR may be the first half of the CRLF that ends a line of
        # exactly MAX_REQUEST_BYTES, so it does not count against the limit.
        size = len(self._buffer)
        if self._buffer.endswith(b"\r"):
            size -= 1
        if size > MAX_REQUEST_BYTES:
            raise RequestTooLong(f"Request is longer than {MAX_REQUEST_BYTES} bytes")

        # A bare LF ends the line for most line readers. Rejecting it at once
        # is clearer to the client than waiting for the request timeout.
        if b"\n" in self._buffer:
            raise BadRequest("Request line must end with CRLF")


def parse_request_line(line: bytes) -> str:
    """Decode a request line without its CRLF and check that it is a usable URL."""
    try:
        url = line.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BadRequest(f"Request is not valid UTF-8 (byte {error.start})") from None

    check_request_url(url)
    return url


def check_request_url(url: str) -> SplitResult:
    """Raise BadRequest unless url is an absolute URL that a server can respond to."""
    if not url:
        raise BadRequest("Request is empty, expected an absolute URL")

    match = _CONTROL_CHARACTERS.search(url)
    if match:
        raise BadRequest(f"URL contains the control character {match.group()!r}")

    # The fragment is for the client alone (RFC 3986 section 3.5); even an
    # empty one ("gemini://host/#") is rejected.
    if "#" in url:
        raise BadRequest("URL must not contain a fragment")

    try:
        parts = urlsplit(url)
        # .port parses the port lazily and raises ValueError when it is not
        # a number in 0-65535.
        parts.port
    except ValueError as error:
        raise BadRequest(f"URL is invalid: {error}") from None

    if not parts.scheme:
        raise BadRequest("URL has no scheme, expected an absolute URL such as gemini://host/")
    if not parts.netloc or not parts.hostname:
        raise BadRequest("URL has no host")
    if "@" in parts.netloc:
        raise BadRequest("URL must not contain a userinfo part")
    return parts


def format_response_header(status: object, meta: object) -> bytes:
    """Build a response header line, or raise InvalidResponseHeader."""
    # bool is an int subclass, but True is never a status an application means.
    if not isinstance(status, int) or isinstance(status, bool):
        raise InvalidResponseHeader(f"status must be an int, got {status!r}")
    if not MIN_STATUS <= status <= MAX_STATUS:
        raise InvalidResponseHeader(f"status must be two digits from {MIN_STATUS} to {MAX_STATUS}, got {status!r}")
    if not isinstance(meta, str):
        raise InvalidResponseHeader(f"meta must be a str, got {type(meta).__name__}")

    match = _CONTROL_CHARACTERS.search(meta)
    if match:
        raise InvalidResponseHeader(f"meta contains the control character {match.group()!r}")

    encoded_meta = meta.encode("utf-8")
    if len(encoded_meta) > MAX_META_BYTES:
        raise InvalidResponseHeader(f"meta is {len(encoded_meta)} bytes, the maximum is {MAX_META_BYTES}")

    return b"%d %s\r\n" % (status, encoded_meta)


def parse_response_header(line: bytes) -> tuple[int, str]:
    """
    Parse the header line a CGI script wrote, without its line ending.

    Accepted: two digits, then either nothing or a space and the meta.
    Raises InvalidResponseHeader for anything else.
    """
    if len(line) < 2 or not line[:2].isdigit():
        raise InvalidResponseHeader(f"header must start with a two-digit status, got {line[:40]!r}")
    if len(line) > 2 and line[2:3] != b" ":
        raise InvalidResponseHeader(f"status must be followed by a space, got {line[:40]!r}")

    try:
        meta = line[3:].decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidResponseHeader("meta is not valid UTF-8") from None

    status = int(line[:2])
    # Formatting checks the range, the control characters and the length.
    format_response_header(status, meta)
    return status, meta


def normalize_hostname(hostname: str) -> str:
    """
    Return hostname in lower case and punycode, so names compare by equality.

    ASCII names are only lower-cased: IDNA 2008 rejects some names that work
    in practice (an underscore, say), and those must still match themselves.
    Raises ValueError for a non-ASCII name that IDNA cannot encode.
    """
    if hostname.isascii():
        return hostname.lower().rstrip(".")
    try:
        return idna.encode(hostname.rstrip("."), uts46=True).decode("ascii")
    except idna.IDNAError as error:
        raise ValueError(f"invalid international hostname {hostname!r}: {error}") from None
