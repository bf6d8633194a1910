"""
Serving a directory: files, index files, generated listings and CGI scripts.

Every request path goes through resolve_url_path() before anything on disk
is touched, so no request can leave the root (see jetforce.app.paths).
Files and listings are iterators that the server pulls one chunk at a time
as the client reads, so memory stays flat whatever the file size.

Below the CGI directory, executable files run as scripts and other files
are never served, so a script that lost its execute bit does not leak its
source. A file inside the CGI directory on disk is never served as a static
file either, whatever URL reaches it (a symbolic link, or its name in
another letter case).
"""

from __future__ import annotations

import mimetypes
import os
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, urlsplit, urlunsplit

from twisted.logger import Logger

from ..errors import NotFound
from .base import JetforceApplication, RateLimiter, Request, Response, RoutePattern, Status
from .cgi import DEFAULT_CGI_TIMEOUT, run_cgi_script
from .paths import ResolvedPath, resolve_url_path

# Bytes read from a file per chunk. The server stops pulling chunks while
# the client's transport is paused, so this bounds what one download holds.
FILE_CHUNK_BYTES = 64 * 1024

# Characters of a directory listing sent per chunk.
LISTING_CHUNK_CHARS = 16 * 1024

GEMINI_MIMETYPE = "text/gemini"

# Python's mimetypes reports compressed files as (inner type, encoding); a
# client downloading foo.tar.gz expects the type of the compressed file.
COMPRESSION_MIMETYPES = {
    "gzip": "application/gzip",
    "bzip2": "application/x-bzip2",
    "xz": "application/x-xz",
    "compress": "application/x-compress",
    "br": "application/x-brotli",
}

# C0 controls and DEL in a listing label would end the gemtext line early.
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")

log = Logger(namespace="jetforce.static")


@dataclass(frozen=True)
class CGIScript:
    """An executable file below the CGI directory, with the URL parts a script receives."""

    path: Path
    script_name: str
    path_info: str


class FileChunks:
    """
    Iterator over an open file in chunks of up to chunk_bytes.

    The file is closed at its end and by close(), which a generator that
    delegates to it with `yield from` calls when it is closed itself.
    """

    def __init__(self, handle: BinaryIO, chunk_bytes: int = FILE_CHUNK_BYTES) -> None:
        self._handle = handle
        self._chunk_bytes = chunk_bytes

    def __iter__(self) -> FileChunks:
        return self

    def __next__(self) -> bytes:
        if self._handle.closed:
            raise StopIteration
        chunk = self._handle.read(self._chunk_bytes)
        if not chunk:
            self.close()
            raise StopIteration
        return chunk

    def close(self) -> None:
        self._handle.close()

    def fileno(self) -> int:
        return self._handle.fileno()

    @property
    def closed(self) -> bool:
        return self._handle.closed


class StaticDirectoryApplication(JetforceApplication):
    """
    Serving of the files below root_directory, with CGI scripts below cgi_directory.

    cgi_directory is relative to the root; an empty one turns CGI off.
    cgi_timeout is the number of seconds a script has to write its header.
    reactor runs the scripts and defaults to the global one. Requests for
    another scheme, host or port get 53, missing files 51.
    """

    def __init__(
        self,
        root_directory: str | os.PathLike[str] = "/var/gemini",
        index_file: str = "index.gmi",
        cgi_directory: str = "cgi-bin",
        default_lang: str | None = None,
        rate_limiter: RateLimiter | None = None,
        *,
        cgi_timeout: float = DEFAULT_CGI_TIMEOUT,
        reactor: Any = None,
    ) -> None:
        super().__init__(rate_limiter=rate_limiter)
        self.root = Path(root_directory).resolve()
        self.index_file = index_file
        self.cgi_directory = cgi_directory
        self._cgi_segments = _split_cgi_directory(cgi_directory)
        # ((st_dev, st_ino), case-folded parts of its real path) of the CGI
        # directory, recomputed when the directory is replaced.
        self._cgi_real_parts: tuple[tuple[int, int], list[str]] | None = None
        self.default_lang = default_lang
        self.cgi_timeout = cgi_timeout
        self.reactor = reactor

        self.mimetypes = mimetypes.MimeTypes(filenames=[name for name in mimetypes.knownfiles if os.path.isfile(name)])
        self.mimetypes.add_type(GEMINI_MIMETYPE, ".gmi", strict=True)
        self.mimetypes.add_type(GEMINI_MIMETYPE, ".gemini", strict=True)

        # strict_trailing_slash keeps "/dir" and "/dir/" apart, so that the
        # first is redirected to the second.
        self.routes.append((RoutePattern(".*", strict_trailing_slash=True), self.serve_static_file))

    def serve_static_file(self, request: Request) -> Any:
        """Respond to a request from the file system: a file, a listing, a redirect or a CGI script."""
        raw_path = urlsplit(request.url).path
        try:
            resolved = resolve_url_path(raw_path)
            return self._serve_resolved_path(request, resolved)
        except NotFound:
            return Response(Status.NOT_FOUND, "Not Found")

    def _serve_resolved_path(self, request: Request, resolved: ResolvedPath) -> Any:
        script = self._find_cgi_script(resolved)
        if script is not None:
            return self._run_script(request, script)

        filesystem_path = resolved.filesystem_path(self.root)
        mode = _stat_mode(filesystem_path)
        if mode is None:
            raise NotFound(f"no such file: {filesystem_path}")
        if stat.S_ISDIR(mode):
            return self._serve_directory(request, resolved, filesystem_path)
        if not stat.S_ISREG(mode):
            raise NotFound(f"not a regular file: {filesystem_path}")
        if resolved.trailing_slash:
            raise NotFound(f"a file was requested as a directory: {filesystem_path}")
        return self._serve_file(filesystem_path)

    # Directories.

    def _serve_directory(self, request: Request, resolved: ResolvedPath, filesystem_path: Path) -> Any:
        if not resolved.trailing_slash and resolved.segments:
            return Response(Status.REDIRECT_PERMANENT, _with_trailing_slash(request.url))

        index_segments = (*resolved.segments, self.index_file)
        index_path = filesystem_path / self.index_file
        index_mode = _stat_mode(index_path)
        if index_mode is not None and stat.S_ISREG(index_mode):
            if not self._below_cgi_url(index_segments):
                return self._serve_file(index_path, GEMINI_MIMETYPE)
            # Below the CGI directory an index file is a script like any other.
            if _is_executable_file(index_path, index_mode):
                return self._run_script(request, CGIScript(index_path, "/" + "/".join(index_segments), ""))
            self._warn_not_executable(index_path)
            raise NotFound(f"not executable: {index_path}")

        try:
            listing = self.list_directory(resolved.url_path, filesystem_path)
        except OSError as error:
            log.warn("Cannot list directory {path}: {error}", path=str(filesystem_path), error=error)
            raise NotFound(f"cannot list {filesystem_path}") from error
        return Response(Status.SUCCESS, self.add_extra_parameters(GEMINI_MIMETYPE), listing)

    def list_directory(self, url_path: str, fs_path: Path) -> Iterator[str]:
        """
        Return a text/gemini listing of fs_path: a heading, a parent link and one link per entry.

        The directory is read at once, so an OSError is raised here rather
        than in the middle of the response. Hidden entries are left out, and
        so are names that are not UTF-8, because no URL can request them.
        """
        entries = []
        with os.scandir(fs_path) as scanner:
            for entry in scanner:
                if entry.name.startswith(".") or not _is_utf8_name(entry.name):
                    continue
                try:
                    is_directory = entry.is_dir()
                except OSError:
                    is_directory = False
                entries.append((entry.name, is_directory))
        entries.sort()
        return _render_listing(url_path, entries)

    # Files.

    def _serve_file(self, path: Path, mimetype: str | None = None) -> Response:
        try:
            body = self.load_file(path)
        except PermissionError as error:
            log.warn("Cannot read {path}: {error}", path=str(path), error=error)
            raise NotFound(f"cannot read {path}") from error
        except OSError as error:
            raise NotFound(f"cannot open {path}: {error}") from error

        descriptor = body.fileno() if isinstance(body, FileChunks) else None
        if self._inside_cgi_directory(path, descriptor):
            if isinstance(body, FileChunks):
                body.close()
            log.warn(
                "Not serving {path} as a static file: it lies in the CGI directory {cgi} on disk",
                path=str(path),
                cgi=self.cgi_directory,
            )
            raise NotFound(f"inside the CGI directory: {path}")

        meta = self.add_extra_parameters(mimetype or self.guess_mimetype(path.name))
        return Response(Status.SUCCESS, meta, body)

    def load_file(self, path: Path) -> Iterator[bytes]:
        """
        Open a file and return an iterator over its contents in chunks of FILE_CHUNK_BYTES.

        The file is opened now, so an OSError is raised here rather than in
        the middle of the response. NotFound is raised for anything but a
        regular file (a FIFO, say, whose open could block the server).
        """
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(descriptor).st_mode):
                raise NotFound(f"not a regular file: {path}")
            handle = os.fdopen(descriptor, "rb", buffering=0)
        except BaseException:
            os.close(descriptor)
            raise
        return FileChunks(handle)

    def guess_mimetype(self, name: str) -> str:
        """Return the media type of a file name: its compression type if compressed, octet-stream if unknown."""
        mimetype, encoding = self.mimetypes.guess_type(name, strict=False)
        if encoding is not None:
            return COMPRESSION_MIMETYPES.get(encoding, "application/octet-stream")
        return mimetype or "application/octet-stream"

    def add_extra_parameters(self, meta: str) -> str:
        """Add the default language to text/gemini media types."""
        if self.default_lang and meta.startswith(GEMINI_MIMETYPE):
            return f"{meta}; lang={self.default_lang}"
        return meta

    # CGI.

    def _below_cgi_url(self, segments: tuple[str, ...]) -> bool:
        count = len(self._cgi_segments)
        return count > 0 and len(segments) > count and segments[:count] == self._cgi_segments

    def _inside_cgi_directory(self, path: Path, descriptor: int | None = None) -> bool:
        """
        Tell whether a file lies in the CGI directory on disk, whatever URL reached it.

        descriptor, the file opened for serving, lets the kernel resolve
        its real path in one call instead of one lstat() per component.
        """
        if not self._cgi_segments:
            return False
        cgi_path = self.root.joinpath(*self._cgi_segments)
        try:
            cgi_info = os.stat(cgi_path)
        except OSError:
            return False

        # Only the ancestor of the file at the depth of the CGI directory
        # can be that directory. Comparing inodes rather than names also
        # catches a name in another letter case on a case-insensitive file
        # system. NOTE: that case is untested, as the tests run on a
        # case-sensitive file system.
        cgi_key = (cgi_info.st_dev, cgi_info.st_ino)
        if self._cgi_real_parts is None or self._cgi_real_parts[0] != cgi_key:
            real_parts = os.path.realpath(cgi_path).split(os.sep)
            self._cgi_real_parts = (cgi_key, [part.casefold() for part in real_parts])
        cgi_parts = self._cgi_real_parts[1]
        depth = len(cgi_parts)

        # A path whose leading names differ from the CGI directory's in more
        # than letter case cannot lie inside it; only the others need a stat().
        parts = _real_path(path, descriptor).split(os.sep)
        if len(parts) <= depth or [part.casefold() for part in parts[:depth]] != cgi_parts:
            return False
        try:
            info = os.stat(os.sep.join(parts[:depth]))
        except OSError:
            return False
        return (info.st_dev, info.st_ino) == (cgi_info.st_dev, cgi_info.st_ino)

    def _find_cgi_script(self, resolved: ResolvedPath) -> CGIScript | None:
        """
        Return the shortest prefix of the path that names an executable file below the CGI directory.

        Raises NotFound, with a warning in the log, when that prefix names
        a regular file that is not executable.
        """
        if not self._below_cgi_url(resolved.segments):
            return None

        for position in range(len(self._cgi_segments), len(resolved.segments)):
            count = position + 1
            candidate = resolved.filesystem_path(self.root, count)
            mode = _stat_mode(candidate)
            if mode is None or not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                return None
            if stat.S_ISDIR(mode):
                continue
            if not _is_executable_file(candidate, mode):
                self._warn_not_executable(candidate)
                raise NotFound(f"not executable: {candidate}")
            script_name = "/" + "/".join(resolved.segments[:count])
            return CGIScript(candidate, script_name, resolved.path_info(count))
        return None

    def _run_script(self, request: Request, script: CGIScript) -> Any:
        environ = {**request.environ, "SCRIPT_NAME": script.script_name, "PATH_INFO": script.path_info}
        return self.run_cgi_script(script.path, environ)

    def run_cgi_script(self, path: str | os.PathLike[str], environ: dict[str, Any]) -> Any:
        """
        Run the script at path asynchronously and return its DeferredResponse.

        Raises CGIError when the script cannot be started.
        """
        reactor = self.reactor
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        return run_cgi_script(reactor, os.fspath(path), environ, timeout=self.cgi_timeout)

    def _warn_not_executable(self, path: Path) -> None:
        log.warn(
            "Not serving {path}: it is in the CGI directory but is not an executable file",
            path=str(path),
        )


def _split_cgi_directory(cgi_directory: str) -> tuple[str, ...]:
    segments = tuple(part for part in cgi_directory.split("/") if part not in ("", "."))
    if ".." in segments:
        raise ValueError(f"cgi_directory must be a directory below the root, got {cgi_directory!r}")
    return segments


def _stat_mode(path: Path) -> int | None:
    """Return the mode of path after following symbolic links, or None if it cannot be read."""
    try:
        return path.stat().st_mode
    except (OSError, ValueError):
        return None


def _is_executable_file(path: Path, mode: int) -> bool:
    return stat.S_ISREG(mode) and os.access(path, os.X_OK)


def _is_utf8_name(name: str) -> bool:
    # os.scandir returns bytes that are not UTF-8 as lone surrogates.
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable(text: str) -> str:
    return _CONTROL_CHARACTERS.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


def _render_listing(url_path: str, entries: Iterable[tuple[str, bool]]) -> Iterator[str]:
    lines = [f"# Directory listing of {_printable(url_path)}\n\n"]
    if url_path.strip("/"):
        lines.append("=> ../ ..\n")
    size = sum(len(line) for line in lines)

    for name, is_directory in entries:
        suffix = "/" if is_directory else ""
        line = f"=> {quote(name, safe='')}{suffix} {_printable(name)}{suffix}\n"
        lines.append(line)
        size += len(line)
        if size >= LISTING_CHUNK_CHARS:
            yield "".join(lines)
            lines, size = [], 0
    if lines:
        yield "".join(lines)


def _real_path(path: Path, descriptor: int | None) -> str:
    """Return the path of a file with every symbolic link resolved."""
    if descriptor is not None:
        # Linux names an open file's real path in /proc/self/fd.
        try:
            return os.readlink(f"/proc/self/fd/{descriptor}")
        except OSError:
            pass
    return os.path.realpath(path)


def _with_trailing_slash(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=parts.path + "/"))
