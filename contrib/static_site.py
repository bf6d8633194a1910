#!/usr/bin/env python3
"""
The static file server with custom redirects and a certificate-protected directory.

    python contrib/static_site.py --dir site \\
        --redirect /old.gmi=/new.gmi --redirect /blog/=/gemlog/ \\
        --allow SHA256:<fingerprint of a client certificate>

StaticDirectoryApplication serves --dir through one catch-all route. Routes
added after it are tried first, so a subclass can take over some paths and
hand the rest back to serve_static_file():

- each --redirect OLD=NEW responds with 31 (permanent redirect). An OLD
  ending in "/" moves a whole directory: /blog/post.gmi goes to
  /gemlog/post.gmi.
- files below --private-dir are served only to a client certificate whose
  SHA-256 fingerprint was given with --allow. A request without a
  certificate gets 60, any other certificate 61. The check overrides
  serve_static_file(), so that every spelling of a private path is
  covered. The server accepts self-signed certificates, which is what
  Gemini clients make.

Print the fingerprint of a certificate with:
    openssl x509 -in client.crt -noout -fingerprint -sha256
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from jetforce import GeminiServer, Request, Response, StaticDirectoryApplication, Status


def normalize_fingerprint(text: str) -> str:
    """Return a SHA-256 fingerprint as TLS_CLIENT_HASH writes it, from that form or openssl's."""
    hex_digits = re.sub(r"^(sha256:|sha256 fingerprint=)", "", text.strip(), flags=re.IGNORECASE)
    hex_digits = hex_digits.replace(":", "").upper()
    if not re.fullmatch(r"[0-9A-F]{64}", hex_digits):
        raise ValueError(f"not a SHA-256 fingerprint: {text!r}")
    return "SHA256:" + hex_digits


class SiteApplication(StaticDirectoryApplication):
    def __init__(
        self,
        root_directory: str | Path,
        redirects: dict[str, str],
        private_directory: str,
        allowed_fingerprints: set[str],
    ) -> None:
        super().__init__(root_directory)
        self.private_directory = private_directory.strip("/")
        self.allowed_fingerprints = allowed_fingerprints

        for old, new in redirects.items():
            if old.endswith("/"):
                pattern = re.escape(old.rstrip("/")) + "(?P<rest>/.*)?"
                target = new.rstrip("/")
            else:
                pattern = re.escape(old)
                target = new
            self.route(pattern, strict_trailing_slash=True)(self.redirect_to(target))

    def redirect_to(self, target: str) -> Any:
        """Return a route handler that redirects (31) to target, keeping the rest of a moved directory's path."""

        def redirect(request: Request, rest: str | None = None) -> Response:
            location = target + (rest or "")
            query = urlsplit(request.url).query
            if query:
                location += "?" + query
            return Response(Status.REDIRECT_PERMANENT, location)

        return redirect

    def serve_static_file(self, request: Request) -> Any:
        # The check sits here, not in a route of its own, because every path
        # that reaches a file comes through this method, including spellings
        # such as //private/ or /other/../private/ that a route pattern misses.
        if self.is_private(request.path):
            fingerprint = request.environ.get("TLS_CLIENT_HASH")
            if fingerprint is None:
                return Response(Status.CLIENT_CERTIFICATE_REQUIRED, "This directory needs a client certificate")
            if fingerprint not in self.allowed_fingerprints:
                return Response(Status.CERTIFICATE_NOT_AUTHORISED, "This certificate may not read this directory")
        return super().serve_static_file(request)

    def is_private(self, path: str) -> bool:
        """Tell whether a decoded URL path names the private directory or a file below it."""
        segments: list[str] = []
        for segment in path.split("/"):
            if segment == "..":
                if segments:
                    segments.pop()
            elif segment not in ("", "."):
                segments.append(segment)
        # Compared without case, for file systems that ignore it.
        private_segments = [part.casefold() for part in self.private_directory.split("/") if part]
        leading = [segment.casefold() for segment in segments[: len(private_segments)]]
        return bool(private_segments) and leading == private_segments


def parse_redirect(text: str) -> tuple[str, str]:
    old, separator, new = text.partition("=")
    if not separator or not old.startswith("/") or not new:
        raise argparse.ArgumentTypeError(f"expected OLD=NEW with OLD a path starting with /, got {text!r}")
    return old, new


def parse_fingerprint(text: str) -> str:
    try:
        return normalize_fingerprint(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve a directory with redirects and a protected subdirectory.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=1965, help="TCP port; 0 picks a free one (default: 1965)")
    parser.add_argument("--hostname", default="localhost", help="hostname in request URLs (default: localhost)")
    parser.add_argument("--dir", default=".", help="directory to serve (default: the current directory)")
    parser.add_argument(
        "--private-dir",
        default="private",
        help="directory below --dir served only to allowed certificates (default: private)",
    )
    parser.add_argument(
        "--allow",
        metavar="FINGERPRINT",
        type=parse_fingerprint,
        action="append",
        default=[],
        help="SHA-256 fingerprint of a certificate that may read --private-dir; repeatable",
    )
    parser.add_argument(
        "--redirect",
        metavar="OLD=NEW",
        type=parse_redirect,
        action="append",
        default=[],
        help="respond to requests for path OLD with a permanent redirect (31) to NEW; repeatable",
    )
    args = parser.parse_args()

    app = SiteApplication(args.dir, dict(args.redirect), args.private_dir, set(args.allow))
    server = GeminiServer(app, host=args.host, port=args.port, hostname=args.hostname, allow_transient_certs=True)
    server.run()


if __name__ == "__main__":
    main()
