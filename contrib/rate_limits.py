#!/usr/bin/env python3
"""
Per-route rate limits: a different RateLimiter on each route that needs one.

    python contrib/rate_limits.py

Routes:
    /          no limit
    /roll      a die roll, 10 per minute per client address
    /search    3 searches per minute per client address
    /report    2 reports per hour per client certificate (per address without one)

Certificates are requested only when the server is started with
JETFORCE_ALLOW_TRANSIENT_CERTS=1 in the environment. A request over a
limit gets status 44 with the seconds to wait as meta. A rate_limiter
given to JetforceApplication itself would cover every route instead,
checked before routing.
"""

from __future__ import annotations

import argparse
import random

from jetforce import GeminiServer, JetforceApplication, RateLimiter, Request, Response, Status

WORDS = ["aurora", "bicycle", "capsule", "gemini", "lighthouse", "orbit", "satellite", "telescope"]


class CertificateRateLimiter(RateLimiter):
    """Counts requests per client certificate, so that users behind one address get a count each."""

    def get_key(self, request: Request) -> str | None:
        return request.environ.get("TLS_CLIENT_HASH") or request.environ.get("REMOTE_ADDR")


roll_limiter = RateLimiter("10/m")
search_limiter = RateLimiter("3/m")
report_limiter = CertificateRateLimiter("2/h")


def build_app() -> JetforceApplication:
    app = JetforceApplication()

    @app.route("")
    def index(request: Request) -> Response:
        body = (
            "# Rate limits\n\n"
            "=> /roll Roll a die (10 per minute)\n"
            "=> /search Search the word list (3 per minute)\n"
            "=> /report Report a problem (2 per hour)\n"
        )
        return Response(Status.SUCCESS, "text/gemini", body)

    @app.route("/roll")
    @roll_limiter.apply
    def roll(request: Request) -> Response:
        return Response(Status.SUCCESS, "text/plain", f"You rolled {random.randint(1, 6)}\n")

    @app.route("/search")
    @search_limiter.apply
    def search(request: Request) -> Response:
        if not request.query:
            return Response(Status.INPUT, "Search for")
        matches = [word for word in WORDS if request.query.lower() in word]
        lines = [f"{word}\n" for word in matches] or ["No matches.\n"]
        return Response(Status.SUCCESS, "text/plain", "".join(lines))

    @app.route("/report")
    @report_limiter.apply
    def report(request: Request) -> Response:
        if not request.query:
            return Response(Status.INPUT, "Describe the problem")
        return Response(Status.SUCCESS, "text/plain", "Thank you, the report was received.\n")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve routes with a rate limit each.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=1965, help="TCP port; 0 picks a free one (default: 1965)")
    parser.add_argument("--hostname", default="localhost", help="hostname in request URLs (default: localhost)")
    args = parser.parse_args()

    GeminiServer(build_app(), host=args.host, port=args.port, hostname=args.hostname).run()


if __name__ == "__main__":
    main()
