"""
Property tests: every input to the request parser, the header formatter and
the path resolver either yields a valid value or a typed error.
"""

from __future__ import annotations

import os
import re
from pathlib import PurePosixPath

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jetforce.app.paths import resolve_url_path
from jetforce.errors import GeminiError, InvalidResponseHeader, NotFound, RequestError
from jetforce.wire import MAX_REQUEST_BYTES, RequestLineReader, format_response_header

ROOT = PurePosixPath("/srv/gemini")
HEADER = re.compile(rb"^[1-6]\d [^\r\n]*\r\n$", re.DOTALL)

url_pieces = list("gemini:/@#?%.aZ09-_~ \t\r\n\x00é") + ["//", "..", "%2F", "%2e", "://"]
url_like_text = st.lists(st.sampled_from(url_pieces), max_size=40).map("".join)
request_bytes = st.one_of(
    st.binary(max_size=1200),
    url_like_text.map(lambda text: text.encode("utf-8")),
    st.builds(lambda url, tail: ("gemini://localhost/" + url).encode("utf-8") + tail, url_like_text, st.binary(max_size=8)),
)


def split_into_chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(cut, len(data)) for cut in cuts})
    chunks, start = [], 0
    for point in points:
        chunks.append(data[start:point])
        start = point
    chunks.append(data[start:])
    return chunks


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(data=request_bytes, cuts=st.lists(st.integers(min_value=0, max_value=1300), max_size=5))
def test_request_reader_yields_valid_url_or_typed_error(data, cuts):
    reader = RequestLineReader()
    for chunk in split_into_chunks(data + b"\r\n", cuts):
        try:
            url = reader.feed(chunk)
        except RequestError as error:
            assert error.status == 59
            assert error.meta
            return
        if url is not None:
            break
    else:
        return

    assert len(url.encode("utf-8")) <= MAX_REQUEST_BYTES
    assert "#" not in url
    assert not re.search(r"[\x00-\x1f\x7f]", url)
    scheme, separator, rest = url.partition(":")
    assert scheme and separator


@settings(max_examples=400)
@given(status=st.integers(min_value=-5, max_value=120), meta=st.text(max_size=1100))
def test_header_is_one_valid_line_or_typed_error(status, meta):
    try:
        header = format_response_header(status, meta)
    except InvalidResponseHeader as error:
        assert isinstance(error, GeminiError)
        return
    assert HEADER.match(header)
    assert header.count(b"\r\n") == 1
    assert len(header) <= 2 + 1 + 1024 + 2


path_text = st.lists(
    st.sampled_from(["", ".", "..", "%2e%2e", "%2E.", ".%2e", "%2F", "a", "b%20c", ".hidden", ".well-known",
                     "%00", "%ff", "é", "%C3%A9", "x" * 300, "%", "%zz", "..%2f..", "cgi-bin"]),
    max_size=10,
).map(lambda segments: "/" + "/".join(segments))


@settings(max_examples=600)
@given(raw_path=st.one_of(path_text, st.text(max_size=60)))
def test_resolved_path_never_leaves_root(raw_path):
    try:
        resolved = resolve_url_path(raw_path)
    except NotFound:
        return

    for segment in resolved.segments:
        assert segment not in ("", ".", "..")
        assert "/" not in segment
        assert "\x00" not in segment
    joined = os.path.normpath(str(ROOT.joinpath(*resolved.segments)))
    assert joined == str(ROOT) or joined.startswith(str(ROOT) + "/")
