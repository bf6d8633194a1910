#!/usr/bin/env python3
"""
Virtual hosting: one server, one application per hostname, with CompositeApplication.

    python contrib/vhosts.py --hostname example.org \\
        --vhost apple.example.org=sites/apple --vhost banana.example.org=sites/banana

Requests for --hostname get a page that links to every virtual host. Each
--vhost NAME=DIR serves DIR as a static site for URLs naming NAME. A URL
for any other host is answered 53 (proxy request refused), because the map
has no None entry for a default application.

Each application gets HOSTNAME set to the host of the URL, so its routes
treat that host as their own. The server presents one certificate for all
names: a self-signed one for --hostname unless --tls-certfile is given,
which may be a certificate with every name in its subjectAltName.
"""

from __future__ import annotations

import argparse
from typing import Any

from jetforce import (
    CompositeApplication,
    GeminiServer,
    JetforceApplication,
    Request,
    Response,
    StaticDirectoryApplication,
    Status,
)

GEMINI_PORT = 1965


def build_directory_app(hostname: str, vhost_names: list[str]) -> JetforceApplication:
    app = JetforceApplication()

    @app.route("")
    def index(request: Request) -> Response:
        # Gemini URLs leave out the default port 1965; any other goes in the links.
        port = request.environ["SERVER_PORT"]
        suffix = "" if port == GEMINI_PORT else f":{port}"
        lines = [f"# {hostname}\n\n", "Sites on this server:\n\n"]
        lines += [f"=> gemini://{name}{suffix}/ {name}\n" for name in vhost_names]
        return Response(Status.SUCCESS, "text/gemini", "".join(lines))

    return app


def build_app(hostname: str, vhosts: dict[str, str]) -> CompositeApplication:
    application_map: dict[str | None, Any] = {
        name: StaticDirectoryApplication(directory) for name, directory in vhosts.items()
    }
    application_map[hostname] = build_directory_app(hostname, sorted(name.lower() for name in vhosts))
    return CompositeApplication(application_map)


def parse_vhost(text: str) -> tuple[str, str]:
    name, separator, directory = text.partition("=")
    if not separator or not name or not directory:
        raise argparse.ArgumentTypeError(f"expected NAME=DIR, got {text!r}")
    return name, directory


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve one static site per hostname from one server.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=1965, help="TCP port; 0 picks a free one (default: 1965)")
    parser.add_argument("--hostname", default="localhost", help="hostname of the directory page (default: localhost)")
    parser.add_argument(
        "--vhost",
        metavar="NAME=DIR",
        type=parse_vhost,
        action="append",
        default=[],
        help="serve directory DIR for URLs with host NAME; repeatable",
    )
    parser.add_argument("--tls-certfile", help="server certificate in PEM (default: self-signed for --hostname)")
    parser.add_argument("--tls-keyfile", help="private key in PEM for --tls-certfile")
    args = parser.parse_args()

    app = build_app(args.hostname, dict(args.vhost))
    server = GeminiServer(
        app,
        host=args.host,
        port=args.port,
        hostname=args.hostname,
        certfile=args.tls_certfile,
        keyfile=args.tls_keyfile,
    )
    server.run()


if __name__ == "__main__":
    main()
