#!/usr/bin/env python3
"""
Pagination with named route groups: /page/<number> and /item/<id>.

    python contrib/pagination.py --items 95 --per-page 10

A named group in a route's path, such as (?P<number>\\d+), reaches the
handler as a keyword argument of the same name, always as a str.
"""

from __future__ import annotations

import argparse
import math

from jetforce import GeminiServer, JetforceApplication, Request, Response, Status


def build_app(items: list[str], per_page: int) -> JetforceApplication:
    app = JetforceApplication()
    page_count = max(1, math.ceil(len(items) / per_page))

    @app.route("")
    def index(request: Request) -> Response:
        return Response(Status.REDIRECT_TEMPORARY, "/page/1")

    @app.route(r"/page/(?P<number>\d+)")
    def page(request: Request, number: str) -> Response:
        page_number = int(number)
        if not 1 <= page_number <= page_count:
            return Response(Status.NOT_FOUND, f"No page {page_number}: pages run from 1 to {page_count}")

        first = (page_number - 1) * per_page
        lines = [f"# Items, page {page_number} of {page_count}\n\n"]
        for index, item in enumerate(items[first : first + per_page], start=first + 1):
            lines.append(f"=> /item/{index} {item}\n")
        lines.append("\n")
        if page_number > 1:
            lines.append(f"=> /page/{page_number - 1} Previous page\n")
        if page_number < page_count:
            lines.append(f"=> /page/{page_number + 1} Next page\n")
        return Response(Status.SUCCESS, "text/gemini", "".join(lines))

    @app.route(r"/item/(?P<item_id>\d+)")
    def item(request: Request, item_id: str) -> Response:
        position = int(item_id)
        if not 1 <= position <= len(items):
            return Response(Status.NOT_FOUND, f"No item {position}")
        page_number = (position - 1) // per_page + 1
        body = f"# {items[position - 1]}\n\n=> /page/{page_number} Back to page {page_number}\n"
        return Response(Status.SUCCESS, "text/gemini", body)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve a numbered list split into pages.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=1965, help="TCP port; 0 picks a free one (default: 1965)")
    parser.add_argument("--hostname", default="localhost", help="hostname in request URLs (default: localhost)")
    parser.add_argument("--items", type=int, default=95, help="number of items in the list (default: 95)")
    parser.add_argument("--per-page", type=int, default=10, help="items per page (default: 10)")
    args = parser.parse_args()
    if args.per_page < 1:
        parser.error("--per-page must be at least 1")

    items = [f"Item {number}" for number in range(1, args.items + 1)]
    app = build_app(items, args.per_page)
    GeminiServer(app, host=args.host, port=args.port, hostname=args.hostname).run()


if __name__ == "__main__":
    main()
