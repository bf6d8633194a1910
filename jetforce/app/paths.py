"""
Mapping a URL path to files below the static root, without leaving it.

The raw (still percent-encoded) path is split on "/" first and each segment
is decoded once, so an encoded slash can never act as a separator. Dot
segments, encoded or not, are resolved next: empty and "." segments are
dropped and ".." removes the segment before it. Every check is made on the
strings alone, before anything is looked up on disk:

- for the whole path, a NUL byte, an encoded "/" ("%2F"), bytes that are
  not UTF-8 and a ".." that would climb above the root raise NotFound;
- segments used as file names are the whole of a static path and a CGI
  path up to the script. For these, a hidden name (one starting with ".",
  except a top-level ".well-known") and a name longer than
  MAX_SEGMENT_BYTES raise NotFound too.

The part of a CGI path after the script, PATH_INFO, is data for the script
and never a file name, so only the first group of checks applies to it.

Symbolic links below the root are followed, so a link may point outside
it: that is the operator's decision, made by creating the link.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote_to_bytes

from ..errors import NotFound

# Linux NAME_MAX: the maximum length of one directory entry name, in bytes.
MAX_SEGMENT_BYTES = 255

# The only hidden name that is served, and only as the first segment
# (RFC 8615 reserves /.well-known/ at the top of a site).
WELL_KNOWN = ".well-known"

_DOT_SEGMENTS = ("", ".", "..")


@dataclass(frozen=True)
class ResolvedPath:
    """A URL path split into decoded segments, with dot segments resolved."""

    segments: tuple[str, ...]
    # The decoded segments of the raw path in their original order, empty
    # and dot segments included. PATH_INFO is built from these.
    raw_segments: tuple[str, ...]
    # For each entry of segments, the index in raw_segments it came from.
    sources: tuple[int, ...]
    trailing_slash: bool

    def filesystem_path(self, root: Path, count: int | None = None) -> Path:
        """
        Return the path below root named by the first count segments (all by default).

        Raises NotFound when one of them is hidden or too long to be a file name.
        """
        names = self.segments if count is None else self.segments[:count]
        for position, name in enumerate(names):
            check_file_name(name, position)
        return root.joinpath(*names)

    def path_info(self, count: int) -> str:
        """Return the decoded path after the first count (at least one) segments, with its slashes as received."""
        rest = self.raw_segments[self.sources[count - 1] + 1 :]
        return "/" + "/".join(rest) if rest else ""

    @property
    def url_path(self) -> str:
        """The normalised path, with a leading slash and the trailing slash of the request."""
        path = "/" + "/".join(self.segments)
        if self.trailing_slash and self.segments:
            path += "/"
        return path


def resolve_url_path(raw_path: str) -> ResolvedPath:
    """Split, decode and resolve a raw URL path, or raise NotFound if it cannot be mapped below the root."""
    raw_segments = tuple(_decode_segment(segment) for segment in raw_path.split("/"))

    segments: list[str] = []
    sources: list[int] = []
    for index, segment in enumerate(raw_segments):
        if segment in ("", "."):
            continue
        if segment == "..":
            if not segments:
                raise NotFound(f"path climbs above the root: {raw_path!r}")
            segments.pop()
            sources.pop()
            continue
        segments.append(segment)
        sources.append(index)

    # "/dir/", "/dir/." and "/dir/sub/.." all name the directory itself.
    trailing_slash = raw_segments[-1] in _DOT_SEGMENTS
    return ResolvedPath(tuple(segments), raw_segments, tuple(sources), trailing_slash)


def check_file_name(name: str, position: int) -> None:
    """Raise NotFound unless name, the segment at position in a path, may name a file."""
    if len(name.encode("utf-8")) > MAX_SEGMENT_BYTES:
        raise NotFound(f"path segment is longer than {MAX_SEGMENT_BYTES} bytes")
    if name.startswith(".") and not (position == 0 and name == WELL_KNOWN):
        raise NotFound(f"path segment names a hidden file: {name!r}")


def _decode_segment(raw_segment: str) -> str:
    data = unquote_to_bytes(raw_segment)
    if b"\x00" in data:
        raise NotFound("path contains a NUL byte")
    if b"/" in data:
        raise NotFound(f"path segment contains an encoded slash: {raw_segment!r}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise NotFound(f"path is not valid UTF-8: {raw_segment!r}") from None
