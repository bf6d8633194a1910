"""
Mapping a URL path to a file below the static root, without escaping it.

The raw (still percent-encoded) path is split on "/" first and each segment
decoded once, so "%2F" inside a segment can never act as a separator.
Decoded segments are then resolved: empty and "." segments are dropped, and
".." (encoded or not) removes the previous segment and is rejected at the
root. A segment that is hidden (starts with "."), holds a NUL or "/", is
not UTF-8 or is longer than a file name may be raises NotFound. All of this
is decided from the string alone, before anything is looked up on disk.

Symbolic links below the root are followed, so a link can point outside it:
that is the operator's decision, made by creating the link.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote_to_bytes

from ..errors import NotFound

# Linux NAME_MAX: the longest name of one directory entry, in bytes.
MAX_SEGMENT_BYTES = 255

# Hidden names are served only below this top-level directory (RFC 8615).
WELL_KNOWN = ".well-known"


@dataclass(frozen=True)
class ResolvedPath:
    """A URL path split into decoded, safe segments below the root."""

    segments: tuple[str, ...]
    # The decoded segments of the raw path in their original order, empty
    # and dot segments included; CGI's PATH_INFO is built from these.
    raw_segments: tuple[str, ...]
    # For each entry of segments, the index in raw_segments it came from.
    sources: tuple[int, ...]
    trailing_slash: bool

    def filesystem_path(self, root: Path) -> Path:
        return root.joinpath(*self.segments)

    @property
    def url_path(self) -> str:
        """The normalised path, with a leading slash and the trailing slash of the request."""
        path = "/" + "/".join(self.segments)
        if self.trailing_slash and self.segments:
            path += "/"
        return path


def resolve_url_path(raw_path: str) -> ResolvedPath:
    """Split and decode a raw URL path, or raise NotFound if it is unsafe or escapes the root."""
    raw_segments = tuple(_decode_segment(segment) for segment in raw_path.split("/"))

    segments: list[str] = []
    sources: list[int] = []
    for index, segment in enumerate(raw_segments):
        if segment in ("", "."):
            continue
        if segment == "..":
            if not segments:
                raise NotFound("Not found")
            segments.pop()
            sources.pop()
            continue
        segments.append(segment)
        sources.append(index)

    _reject_hidden(segments)
    trailing_slash = raw_path.endswith("/") or raw_path.endswith("/.") or raw_path.endswith("/..")
    return ResolvedPath(tuple(segments), raw_segments, tuple(sources), trailing_slash)


def _decode_segment(raw_segment: str) -> str:
    data = unquote_to_bytes(raw_segment)
    if b"\x00" in data or b"/" in data:
        raise NotFound("Not found")
    if len(data) > MAX_SEGMENT_BYTES:
        raise NotFound("Not found")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise NotFound("Not found") from None


def _reject_hidden(segments: list[str]) -> None:
    for position, segment in enumerate(segments):
        if not segment.startswith("."):
            continue
        if position == 0 and segment == WELL_KNOWN:
            continue
        raise NotFound("Not found")
