"""
Serving a directory: files, index files, generated listings and CGI scripts.

Every request path goes through resolve_url_path() before anything on disk
is touched, so no request can leave the root (see jetforce.app.paths).
Files and listings are generators that the server pulls one chunk at a time
as the client reads, so memory stays flat whatever the file size.
"""

from __future__ import annotations

import mimetypes
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from twisted.logger import Logger

from ..errors import NotFound
from .base import JetforceApplication, RateLimiter, Request, Response, RoutePattern, Status
from .cgi import DEFAULT_CGI_TIMEOUT, run_cgi_script
from .paths import ResolvedPath, resolve_url_path

# Bytes read from a file per chunk. The transport pauses the reading once
# its own buffer is full, so this bounds the memory one download holds.
FILE_CHUNK_BYTES = 64 * 1024

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

log = Logger(namespace="jetforce.static")


class StaticDirectoryApplication(JetforceApplication):
    """
    Serving of the files below root_directory, with CGI scripts below cgi_directory.

    cgi_directory is relative to the root. Requests for another scheme,
    host or port are answered 53, missing files 51.
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
    ) -> None:
        super().__init__(rate_limiter=rate_limiter)
        self.root = Path(root_directory).resolve()
        self.index_file = index_file
        self.cgi_directory = cgi_directory
        self._cgi_segments = tuple(part for part in cgi_directory.strip("/").split("/") if part)
        self.default_lang = default_lang
        self.cgi_timeout = cgi_timeout

        self.mimetypes = mimetypes.MimeTypes(filenames=[name for name in mimetypes.knownfiles if os.path.isfile(name)])
        self.mimetypes.add_type(GEMINI_MIMETYPE, ".gmi", strict=True)
        self.mimetypes.add_type(GEMINI_MIMETYPE, ".gemini", strict=True)

        # strict_trailing_slash keeps "/dir" and "/dir/" apart, so that the
        # first is redirected to the second.
        self.routes.append((RoutePattern(".*", strict_trailing_slash=True), self.serve_static_file))

    def serve_static_file(self, request: Request) -> Response | Any:
        """Answer a request from the file system: a file, a listing, a redirect or a CGI script."""
        raw_path = urlsplit(request.url).path
        try:
            resolved = resolve_url_path(raw_path)
        except NotFound:
            return Response(Status.NOT_FOUND, "Not Found")

        script = self._find_cgi_script(resolved)
        if script is not None:
            return self._serve_cgi(request, resolved, script)

        filesystem_path = resolved.filesystem_path(self.root)
        try:
            mode = filesystem_path.stat().st_mode
        except (OSError, ValueError):
            return Response(Status.NOT_FOUND, "Not Found")

        if stat.S_ISDIR(mode):
            return self._serve_directory(request, resolved, filesystem_path)
        if stat.S_ISREG(mode):
            if self._is_below_cgi_directory(resolved):
                # A script that lost its execute bit must not have its source served.
                log.warn("Not serving {path}: it is in the CGI directory but not executable", path=str(filesystem_path))
                return Response(Status.NOT_FOUND, "Not Found")
            mimetype = self.add_extra_parameters(self.guess_mimetype(filesystem_path.name))
            return Response(Status.SUCCESS, mimetype, self.load_file(filesystem_path))
        return Response(Status.NOT_FOUND, "Not Found")

    # Directories.

    def _serve_directory(self, request: Request, resolved: ResolvedPath, filesystem_path: Path) -> Response:
        if not resolved.trailing_slash and resolved.segments:
            return Response(Status.REDIRECT_PERMANENT, _with_trailing_slash(request.url))

        index_path = filesystem_path / self.index_file
        if index_path.is_file():
            mimetype = self.add_extra_parameters(GEMINI_MIMETYPE)
            return Response(Status.SUCCESS, mimetype, self.load_file(index_path))

        mimetype = self.add_extra_parameters(GEMINI_MIMETYPE)
        return Response(Status.SUCCESS, mimetype, self.list_directory(resolved.url_path, filesystem_path))

    def list_directory(self, url_path: str, fs_path: Path) -> Iterator[str]:
        """Yield a text/gemini listing of fs_path: a heading, a parent link and one link per visible entry."""
        yield f"# Directory listing of {url_path}\n\n"
        if url_path.strip("/"):
            yield "=> ../ ..\n"

        entries = []
        with os.scandir(fs_path) as scanner:
            for entry in scanner:
                if entry.name.startswith("."):
                    continue
                try:
                    is_directory = entry.is_dir()
                except OSError:
                    is_directory = False
                entries.append((entry.name, is_directory))

        for name, is_directory in sorted(entries):
            suffix = "/" if is_directory else ""
            yield f"=> {quote(name, safe='')}{suffix} {name}{suffix}\n"

    # Files.

    def load_file(self, path: Path) -> Iterator[bytes]:
        """Yield the contents of a file in chunks of FILE_CHUNK_BYTES."""
        with open(path, "rb") as handle:
            while True:
                chunk = handle.read(FILE_CHUNK_BYTES)
                if not chunk:
                    return
                yield chunk

    def guess_mimetype(self, name: str) -> str:
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

    def _is_below_cgi_directory(self, resolved: ResolvedPath) -> bool:
        count = len(self._cgi_segments)
        return count > 0 and resolved.segments[:count] == self._cgi_segments and len(resolved.segments) > count

    def _find_cgi_script(self, resolved: ResolvedPath) -> tuple[Path, str, str] | None:
        """Return (path, SCRIPT_NAME, PATH_INFO) for the shortest prefix naming an executable file."""
        if not self._is_below_cgi_directory(resolved):
            return None

        for position in range(len(self._cgi_segments), len(resolved.segments)):
            candidate = self.root.joinpath(*resolved.segments[: position + 1])
            try:
                mode = candidate.stat().st_mode
            except (OSError, ValueError):
                return None
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode) or not os.access(candidate, os.X_OK):
                return None

            script_name = "/" + "/".join(resolved.segments[: position + 1])
            rest = resolved.raw_segments[resolved.sources[position] + 1 :]
            path_info = "/" + "/".join(rest) if rest else ""
            return candidate, script_name, path_info
        return None

    def _serve_cgi(self, request: Request, resolved: ResolvedPath, script: tuple[Path, str, str]) -> Any:
        path, script_name, path_info = script
        environ = {**request.environ, "SCRIPT_NAME": script_name, "PATH_INFO": path_info}
        return self.run_cgi_script(path, environ)

    def run_cgi_script(self, path: str | os.PathLike[str], environ: dict[str, Any]) -> Any:
        """Run the script at path asynchronously and return its DeferredResponse."""
        from twisted.internet import reactor

        return run_cgi_script(reactor, os.fspath(path), environ, timeout=self.cgi_timeout)


def _with_trailing_slash(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=parts.path + "/"))
