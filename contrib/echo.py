#!/usr/bin/env python3
"""
An echo of the request: the parsed URL and every environ entry the application receives.

    python contrib/echo.py --allow-transient-certs

Useful to check what a client sends and what the server makes of it, a
client certificate included: start it with --allow-transient-certs so that
the server requests one.
"""

from __future__ import annotations

import argparse
from typing import Any

from jetforce import GeminiServer, JetforceApplication, Request, Response, Status

REQUEST_ATTRIBUTES = ("url", "scheme", "hostname", "port", "path", "params", "query", "fragment")


def describe_value(key: str, value: Any) -> str:
    if key == "client_certificate" and value is not None:
        return f"<certificate for {value.subject.rfc4514_string()}>"
    return repr(value)


def build_app() -> JetforceApplication:
    app = JetforceApplication()

    # strict_hostname and strict_port off: echo requests for any host and
    # port too, instead of refusing them as proxy requests.
    @app.route(".*", strict_hostname=False, strict_port=False)
    def echo(request: Request) -> Response:
        lines = ["# Echo\n\n", "## Request\n\n", "```\n"]
        lines += [f"{name}: {getattr(request, name)!r}\n" for name in REQUEST_ATTRIBUTES]
        lines += ["```\n\n", "## Environment\n\n", "```\n"]
        lines += [f"{key}: {describe_value(key, value)}\n" for key, value in sorted(request.environ.items())]
        lines.append("```\n")
        return Response(Status.SUCCESS, "text/gemini", "".join(lines))

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve a page that shows each request as the server parsed it.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=1965, help="TCP port; 0 picks a free one (default: 1965)")
    parser.add_argument("--hostname", default="localhost", help="hostname in request URLs (default: localhost)")
    parser.add_argument(
        "--allow-transient-certs",
        action="store_true",
        help="request client certificates and accept self-signed ones, to show them",
    )
    args = parser.parse_args()

    server = GeminiServer(
        build_app(),
        host=args.host,
        port=args.port,
        hostname=args.hostname,
        allow_transient_certs=args.allow_transient_certs,
    )
    server.run()


if __name__ == "__main__":
    main()
