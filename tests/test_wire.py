"""The wire format without I/O: request lines and response headers."""

import pytest

from jetforce.errors import BadRequest, InvalidResponseHeader, RequestTooLong
from jetforce.wire import (
    MAX_META_BYTES,
    MAX_REQUEST_BYTES,
    RequestLineReader,
    format_response_header,
    normalize_hostname,
    parse_response_header,
)


def url_of_length(length: int) -> bytes:
    prefix = b"gemini://localhost/"
    return prefix + b"a" * (length - len(prefix))


def test_reader_returns_url_once_line_complete():
    reader = RequestLineReader()
    assert reader.feed(b"gemini://local") is None
    assert reader.feed(b"host/\r") is None
    assert reader.feed(b"\n") == "gemini://localhost/"


def test_reader_accepts_url_of_maximum_length():
    url = url_of_length(MAX_REQUEST_BYTES)
    assert RequestLineReader().feed(url + b"\r\n") == url.decode()


def test_reader_waits_after_cr_at_limit():
    reader = RequestLineReader()
    url = url_of_length(MAX_REQUEST_BYTES)
    assert reader.feed(url + b"\r") is None
    assert reader.feed(b"\n") == url.decode()


def test_reader_rejects_line_over_limit_without_crlf():
    reader = RequestLineReader()
    assert reader.feed(url_of_length(MAX_REQUEST_BYTES)) is None
    with pytest.raises(RequestTooLong):
        reader.feed(b"a")


def test_reader_rejects_complete_line_over_limit():
    with pytest.raises(RequestTooLong):
        RequestLineReader().feed(url_of_length(MAX_REQUEST_BYTES + 1) + b"\r\n")


def test_reader_ignores_bytes_after_first_line():
    reader = RequestLineReader()
    assert reader.feed(b"gemini://localhost/a\r\ngemini://localhost/b\r\n") == "gemini://localhost/a"


@pytest.mark.parametrize(
    ("line", "message_part"),
    [
        (b"", "empty"),
        (b"\xff\xfe", "UTF-8"),
        (b"/just/a/path", "scheme"),
        (b"localhost/path", "scheme"),
        (b"gemini:///path", "host"),
        (b"gemini://user@localhost/", "userinfo"),
        (b"gemini://@localhost/", "userinfo"),
        (b"gemini://localhost/#frag", "fragment"),
        (b"gemini://localhost/#", "fragment"),
        (b"gemini://localhost/\x00", "control character"),
        (b"gemini://localhost/a\tb", "control character"),
        (b"gemini://localhost:99999/", "invalid"),
        (b"gemini://localhost:port/", "invalid"),
    ],
)
def test_reader_rejects_invalid_request(line, message_part):
    with pytest.raises(BadRequest) as caught:
        RequestLineReader().feed(line + b"\r\n")
    assert caught.value.status == 59
    assert message_part in caught.value.meta


def test_reader_rejects_bare_lf_at_once():
    with pytest.raises(BadRequest) as caught:
        RequestLineReader().feed(b"gemini://localhost/\n")
    assert "CRLF" in caught.value.meta


@pytest.mark.parametrize(
    ("status", "meta", "expected"),
    [
        (20, "text/gemini", b"20 text/gemini\r\n"),
        (51, "", b"51 \r\n"),
        (10, "Café?", "10 Café?\r\n".encode()),
        (69, "x" * MAX_META_BYTES, b"69 " + b"x" * MAX_META_BYTES + b"\r\n"),
    ],
)
def test_format_header_valid(status, meta, expected):
    assert format_response_header(status, meta) == expected


@pytest.mark.parametrize(
    ("status", "meta"),
    [
        (9, "low"),
        (70, "high"),
        (200, "three digits"),
        ("20", "string status"),
        (True, "bool status"),
        (20.0, "float status"),
        (20, "line\r\nbreak"),
        (20, "bare\nlf"),
        (20, "nul\x00"),
        (20, "x" * (MAX_META_BYTES + 1)),
        (20, "é" * (MAX_META_BYTES // 2 + 1)),
        (20, b"bytes meta"),
        (20, None),
    ],
)
def test_format_header_rejects(status, meta):
    with pytest.raises(InvalidResponseHeader):
        format_response_header(status, meta)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"20 text/gemini", (20, "text/gemini")),
        (b"20", (20, "")),
        (b"31 gemini://localhost/next", (31, "gemini://localhost/next")),
    ],
)
def test_parse_cgi_header_valid(line, expected):
    assert parse_response_header(line) == expected


@pytest.mark.parametrize(
    "line",
    [b"", b"2", b"OK", b"20\ttext/gemini", b"200 OK", b"99 x", b"20 a\x01b", b"20 " + b"x" * 1025, b"20 \xff"],
)
def test_parse_cgi_header_rejects(line):
    with pytest.raises(InvalidResponseHeader):
        parse_response_header(line)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("LocalHost", "localhost"),
        ("example.org.", "example.org"),
        ("café.example", "xn--caf-dma.example"),
        ("CAFÉ.example", "xn--caf-dma.example"),
        ("my_host.example", "my_host.example"),
    ],
)
def test_normalize_hostname(name, expected):
    assert normalize_hostname(name) == expected
