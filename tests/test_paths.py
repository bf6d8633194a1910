"""URL path resolution: decoding once, dot segments, the root, file names and PATH_INFO."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jetforce.app.paths import MAX_SEGMENT_BYTES, check_file_name, resolve_url_path
from jetforce.errors import NotFound

ROOT = Path("/srv/gemini")


@pytest.mark.parametrize(
    ("raw_path", "segments", "trailing_slash"),
    [
        ("", (), True),
        ("/", (), True),
        ("/a", ("a",), False),
        ("/a/", ("a",), True),
        ("//a///b//", ("a", "b"), True),
        ("/a/./b", ("a", "b"), False),
        ("/a/.", ("a",), True),
        ("/a/b/..", ("a",), True),
        ("/a/%2e%2E/b", ("b",), False),
        ("/a/.%2e/b", ("b",), False),
        ("/a/%2E./b", ("b",), False),
        ("/a/%2e", ("a",), True),
        ("/a%20b/c%C3%A9", ("a b", "cé"), False),
        ("/café", ("café",), False),
        ("/%252e%252e", ("%2e%2e",), False),
        ("/..;", ("..;",), False),
        ("/a%5C..%5Cb", ("a\\..\\b",), False),
        ("/100%", ("100%",), False),
        ("/%zz", ("%zz",), False),
    ],
)
def test_resolve_valid_paths(raw_path: str, segments: tuple[str, ...], trailing_slash: bool) -> None:
    resolved = resolve_url_path(raw_path)

    assert resolved.segments == segments
    assert resolved.trailing_slash is trailing_slash


@pytest.mark.parametrize(
    "raw_path",
    [
        "/..",
        "/../etc/passwd",
        "/a/../../etc/passwd",
        "/%2e%2e/etc/passwd",
        "/%2E%2E/etc/passwd",
        "/.%2e/etc/passwd",
        "/./../etc/passwd",
        "//../etc/passwd",
        "/..%2Fetc%2Fpasswd",
        "/..%2fetc",
        "/a%2F..%2F..%2Fetc",
        "/%2Fetc%2Fpasswd",
        "/a%00",
        "/a%00/../b",
        "/%00",
        "/%ff",
        "/%c0%ae%c0%ae/etc/passwd",
        "/%ed%a0%80",
    ],
)
def test_resolve_rejects_unsafe_paths(raw_path: str) -> None:
    with pytest.raises(NotFound):
        resolve_url_path(raw_path)


def test_encoded_slash_never_splits_a_segment() -> None:
    with pytest.raises(NotFound, match="encoded slash"):
        resolve_url_path("/a%2Fb")


def test_url_path_is_normalised() -> None:
    assert resolve_url_path("//a/./b/../c/").url_path == "/a/c/"
    assert resolve_url_path("/a/b").url_path == "/a/b"
    assert resolve_url_path("/").url_path == "/"


@pytest.mark.parametrize(
    "name",
    [".hidden", ".git", "..hidden", ".", "x" * (MAX_SEGMENT_BYTES + 1), "é" * 128],
)
def test_file_name_rejected(name: str) -> None:
    with pytest.raises(NotFound):
        check_file_name(name, position=0)


@pytest.mark.parametrize("name", ["a", "a.b", "x" * MAX_SEGMENT_BYTES, "é" * 127, "a.", "a..b", ".well-known"])
def test_file_name_accepted_at_top(name: str) -> None:
    check_file_name(name, position=0)


def test_well_known_only_at_top() -> None:
    with pytest.raises(NotFound):
        check_file_name(".well-known", position=1)


def test_filesystem_path_checks_every_name() -> None:
    resolved = resolve_url_path("/.well-known/security.txt")
    assert resolved.filesystem_path(ROOT) == ROOT / ".well-known" / "security.txt"

    for raw_path in ("/.git/config", "/a/.env", "/.well-known/.private", "/a/.well-known/x"):
        with pytest.raises(NotFound):
            resolve_url_path(raw_path).filesystem_path(ROOT)


def test_filesystem_path_checks_only_the_prefix() -> None:
    resolved = resolve_url_path("/cgi-bin/script/.data/" + "x" * 400)

    assert resolved.filesystem_path(ROOT, 2) == ROOT / "cgi-bin" / "script"
    with pytest.raises(NotFound):
        resolved.filesystem_path(ROOT)


@pytest.mark.parametrize(
    ("raw_path", "count", "path_info"),
    [
        ("/cgi-bin/script", 2, ""),
        ("/cgi-bin/script/", 2, "/"),
        ("/cgi-bin/script//a///b/", 2, "//a///b/"),
        ("/cgi-bin/script/a%20b/c%C3%A9", 2, "/a b/cé"),
        ("//cgi-bin/./script/x", 2, "/x"),
        ("/cgi-bin/other/../script/x", 2, "/x"),
        ("/cgi-bin/script/../script/x", 2, "/x"),
        ("/cgi-bin/script/a/../b", 2, "/a/../b"),
        ("/cgi-bin/script/.hidden", 2, "/.hidden"),
        ("/cgi-bin/script/" + "A" * 400, 2, "/" + "A" * 400),
    ],
)
def test_path_info_keeps_the_rest_verbatim(raw_path: str, count: int, path_info: str) -> None:
    assert resolve_url_path(raw_path).path_info(count) == path_info


segment_pieces = st.sampled_from(
    ["", ".", "..", "%2e", "%2E%2e", ".%2E", "a", "b%20c", ".hidden", "%2F", "%2f..", "%00", "%ff", "é", "%C3%A9", "x" * 260]
)


@settings(max_examples=500, deadline=None)
@given(st.lists(segment_pieces, max_size=12))
def test_resolved_names_stay_below_root(pieces: list[str]) -> None:
    raw_path = "/" + "/".join(pieces)
    try:
        resolved = resolve_url_path(raw_path)
        path = resolved.filesystem_path(ROOT)
    except NotFound:
        return

    relative = path.relative_to(ROOT)
    for part in relative.parts:
        assert part not in (".", "..")
        assert not part.startswith(".") or (part == ".well-known" and relative.parts[0] == part)
        assert "/" not in part
        assert "\x00" not in part
        assert len(part.encode("utf-8")) <= MAX_SEGMENT_BYTES
