#!/usr/bin/env python3
"""
A guestbook: visitors sign it through an input prompt, entries live in SQLite.

    python contrib/guestbook.py --db guestbook.sqlite3

Routes:
    /       the entries, newest first
    /sign   asks for a message (status 10), stores it and redirects to /

A visitor who presents a client certificate signs with its common name,
everyone else as "anonymous". The server requests certificates only when
started with JETFORCE_ALLOW_TRANSIENT_CERTS=1 in the environment.
"""

from __future__ import annotations

import argparse
import datetime
import sqlite3

from jetforce import GeminiServer, JetforceApplication, Request, Response, Status

# Longer messages get the prompt again. Gemini request URLs are at most
# 1024 bytes, so this is a limit for readability rather than size.
MAX_MESSAGE_CHARACTERS = 500

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY,
    created TEXT NOT NULL,
    author TEXT NOT NULL,
    message TEXT NOT NULL
)
"""


def quote_lines(text: str) -> str:
    """Format visitor text as gemtext quote lines, so that it cannot make links or headings."""
    return "".join(f"> {line}\n" for line in text.splitlines() or [""])


def build_app(database: sqlite3.Connection) -> JetforceApplication:
    database.execute(SCHEMA)
    app = JetforceApplication()

    @app.route("")
    def index(request: Request) -> Response:
        rows = database.execute("SELECT created, author, message FROM entries ORDER BY id DESC").fetchall()
        lines = ["# Guestbook\n", "=> /sign Sign the guestbook\n"]
        if not rows:
            lines.append("\nNobody has signed yet.\n")
        for created, author, message in rows:
            lines.append(f"\n## {author}, {created}\n")
            lines.append(quote_lines(message))
        return Response(Status.SUCCESS, "text/gemini", "".join(lines))

    @app.route("/sign")
    def sign(request: Request) -> Response:
        message = request.query.strip()
        if not message:
            return Response(Status.INPUT, "Your message for the guestbook")
        if len(message) > MAX_MESSAGE_CHARACTERS:
            return Response(Status.INPUT, f"Please keep it under {MAX_MESSAGE_CHARACTERS} characters")

        author = request.environ.get("REMOTE_USER") or "anonymous"
        created = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        # A single short INSERT blocks the reactor only briefly, so a
        # guestbook can run it in the handler. Busier applications use
        # twisted.enterprise.adbapi to run queries in a thread pool.
        with database:
            database.execute(
                "INSERT INTO entries (created, author, message) VALUES (?, ?, ?)", (created, author, message)
            )
        return Response(Status.REDIRECT_TEMPORARY, "/")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve a guestbook whose entries are kept in SQLite.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=1965, help="TCP port; 0 picks a free one (default: 1965)")
    parser.add_argument("--hostname", default="localhost", help="hostname in request URLs (default: localhost)")
    parser.add_argument("--db", default="guestbook.sqlite3", help="SQLite file (default: guestbook.sqlite3)")
    args = parser.parse_args()

    app = build_app(sqlite3.connect(args.db))
    GeminiServer(app, host=args.host, port=args.port, hostname=args.hostname).run()


if __name__ == "__main__":
    main()
