#!/usr/bin/env python3
"""
A hit counter: every page shows how often it was visited, counts kept in SQLite.

    python contrib/counter.py --db counter.sqlite3

Any path is a page. The counts survive a restart because each visit is
written to the database before the page is sent.
"""

from __future__ import annotations

import argparse
import sqlite3

from jetforce import GeminiServer, JetforceApplication, Request, Response, Status

SCHEMA = "CREATE TABLE IF NOT EXISTS hits (path TEXT PRIMARY KEY, count INTEGER NOT NULL)"


def build_app(database: sqlite3.Connection) -> JetforceApplication:
    database.execute(SCHEMA)
    app = JetforceApplication()

    @app.route(".*")
    def count_visit(request: Request) -> Response:
        path = request.path or "/"
        with database:
            database.execute(
                "INSERT INTO hits (path, count) VALUES (?, 1) ON CONFLICT (path) DO UPDATE SET count = count + 1",
                (path,),
            )
        (count,) = database.execute("SELECT count FROM hits WHERE path = ?", (path,)).fetchone()
        (total,) = database.execute("SELECT COALESCE(SUM(count), 0) FROM hits").fetchone()

        times = "time" if count == 1 else "times"
        body = (
            "# Hit counter\n\n"
            f"This page ({path}) has been visited {count} {times}.\n"
            f"All pages together: {total} visits.\n"
        )
        return Response(Status.SUCCESS, "text/gemini", body)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve pages that count their visits in SQLite.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=1965, help="TCP port; 0 picks a free one (default: 1965)")
    parser.add_argument("--hostname", default="localhost", help="hostname in request URLs (default: localhost)")
    parser.add_argument("--db", default="counter.sqlite3", help="SQLite file (default: counter.sqlite3)")
    args = parser.parse_args()

    app = build_app(sqlite3.connect(args.db))
    GeminiServer(app, host=args.host, port=args.port, hostname=args.hostname).run()


if __name__ == "__main__":
    main()
