#!/usr/bin/env python3
"""
Trust on first use: a client certificate becomes an identity the first time it registers a name.

    python contrib/tofu_identity.py --db identities.sqlite3

Gemini clients make their own self-signed certificates, so no CA can vouch
for them. Instead the server remembers a certificate's SHA-256 fingerprint
(TLS_CLIENT_HASH) under the name its owner picks, and from then on that
certificate is that person. The server accepts such certificates only
because this example starts it with allow_transient_certs=True.

Routes:
    /             who the server thinks you are
    /register     asks for a name (status 10) and pins your certificate to it
    /notes        your private notes
    /notes/add    asks for a note (status 10) and stores it

The protected pages respond 60 without a certificate, 62 for a certificate
outside its validity dates, and 61 for a certificate that is not registered.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import re
import sqlite3
from dataclasses import dataclass
from typing import Any

from jetforce import GeminiServer, JetforceApplication, Request, Response, Status

NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,32}")
MAX_NOTE_CHARACTERS = 500

SCHEMA = """
CREATE TABLE IF NOT EXISTS identities (
    fingerprint TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE COLLATE NOCASE,
    registered TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS notes (
    id INTEGER PRIMARY KEY,
    fingerprint TEXT NOT NULL REFERENCES identities (fingerprint),
    created TEXT NOT NULL,
    text TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class Identity:
    fingerprint: str
    name: str


class IdentityStore:
    """Names pinned to certificate fingerprints, and each identity's notes, in SQLite."""

    def __init__(self, database: sqlite3.Connection) -> None:
        self.database = database
        self.database.executescript(SCHEMA)

    def find(self, fingerprint: str) -> Identity | None:
        row = self.database.execute("SELECT name FROM identities WHERE fingerprint = ?", (fingerprint,)).fetchone()
        return None if row is None else Identity(fingerprint, row[0])

    def register(self, fingerprint: str, name: str) -> bool:
        """Pin fingerprint to name; return False when another certificate has the name already."""
        try:
            with self.database:
                self.database.execute(
                    "INSERT INTO identities (fingerprint, name, registered) VALUES (?, ?, ?)",
                    (fingerprint, name, now_text()),
                )
        except sqlite3.IntegrityError:
            return False
        return True

    def notes(self, identity: Identity) -> list[tuple[str, str]]:
        return self.database.execute(
            "SELECT created, text FROM notes WHERE fingerprint = ? ORDER BY id", (identity.fingerprint,)
        ).fetchall()

    def add_note(self, identity: Identity, text: str) -> None:
        with self.database:
            self.database.execute(
                "INSERT INTO notes (fingerprint, created, text) VALUES (?, ?, ?)",
                (identity.fingerprint, now_text(), text),
            )


def now_text() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def check_certificate(request: Request) -> Response | None:
    """Return the 60 or 62 response for a missing or out-of-date certificate, or None when it is usable."""
    certificate = request.environ.get("client_certificate")
    if certificate is None:
        return Response(Status.CLIENT_CERTIFICATE_REQUIRED, "Present a client certificate to continue")

    now = datetime.datetime.now(datetime.timezone.utc)
    if now > certificate.not_valid_after_utc:
        return Response(Status.CERTIFICATE_NOT_VALID, f"Certificate expired on {request.environ['TLS_CLIENT_NOT_AFTER']}")
    if now < certificate.not_valid_before_utc:
        return Response(
            Status.CERTIFICATE_NOT_VALID, f"Certificate is not valid before {request.environ['TLS_CLIENT_NOT_BEFORE']}"
        )
    return None


def requires_identity(store: IdentityStore) -> Any:
    """Wrap a route handler so that it runs only for a registered certificate, given as identity=."""

    def decorator(handler: Any) -> Any:
        @functools.wraps(handler)
        def checked_handler(request: Request, **kwargs: Any) -> Response:
            problem = check_certificate(request)
            if problem is not None:
                return problem
            identity = store.find(request.environ["TLS_CLIENT_HASH"])
            if identity is None:
                return Response(Status.CERTIFICATE_NOT_AUTHORISED, "Unknown certificate: register a name at /register")
            return handler(request, identity=identity, **kwargs)

        return checked_handler

    return decorator


def build_app(store: IdentityStore) -> JetforceApplication:
    app = JetforceApplication()

    @app.route("")
    def index(request: Request) -> Response:
        lines = ["# Trust on first use\n\n"]
        fingerprint = request.environ.get("TLS_CLIENT_HASH")
        identity = store.find(fingerprint) if fingerprint else None
        if fingerprint is None:
            lines.append("You presented no client certificate.\n")
        elif identity is None:
            lines.append(f"Your certificate {fingerprint} is not registered yet.\n")
        else:
            lines.append(f"You are {identity.name}, known by certificate {fingerprint}.\n")
        lines.append("\n=> /register Register a name for your certificate\n=> /notes Your notes\n")
        return Response(Status.SUCCESS, "text/gemini", "".join(lines))

    @app.route("/register")
    def register(request: Request) -> Response:
        problem = check_certificate(request)
        if problem is not None:
            return problem
        fingerprint = request.environ["TLS_CLIENT_HASH"]
        if store.find(fingerprint) is not None:
            return Response(Status.REDIRECT_TEMPORARY, "/notes")

        name = request.query.strip()
        if not name:
            return Response(Status.INPUT, "Choose a name: 1 to 32 letters, digits, - or _")
        if not NAME_PATTERN.fullmatch(name):
            return Response(Status.INPUT, "Names are 1 to 32 letters, digits, - or _; choose another")
        if not store.register(fingerprint, name):
            return Response(Status.INPUT, f"The name {name} is taken; choose another")
        return Response(Status.REDIRECT_TEMPORARY, "/notes")

    @app.route("/notes")
    @requires_identity(store)
    def notes(request: Request, identity: Identity) -> Response:
        lines = [f"# Notes of {identity.name}\n\n", "=> /notes/add Add a note\n\n"]
        entries = store.notes(identity)
        if not entries:
            lines.append("No notes yet.\n")
        for created, text in entries:
            lines.append(f"* {created}: {text}\n")
        return Response(Status.SUCCESS, "text/gemini", "".join(lines))

    @app.route("/notes/add")
    @requires_identity(store)
    def add_note(request: Request, identity: Identity) -> Response:
        # Notes are one line each, so that a note cannot turn into a link.
        text = " ".join(request.query.split())
        if not text:
            return Response(Status.SENSITIVE_INPUT, "Your note")
        if len(text) > MAX_NOTE_CHARACTERS:
            return Response(Status.SENSITIVE_INPUT, f"Please keep it under {MAX_NOTE_CHARACTERS} characters")
        store.add_note(identity, text)
        return Response(Status.REDIRECT_TEMPORARY, "/notes")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve private notes for identities pinned to client certificates.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=1965, help="TCP port; 0 picks a free one (default: 1965)")
    parser.add_argument("--hostname", default="localhost", help="hostname in request URLs (default: localhost)")
    parser.add_argument("--db", default="identities.sqlite3", help="SQLite file (default: identities.sqlite3)")
    args = parser.parse_args()

    app = build_app(IdentityStore(sqlite3.connect(args.db)))
    server = GeminiServer(app, host=args.host, port=args.port, hostname=args.hostname, allow_transient_certs=True)
    server.run()


if __name__ == "__main__":
    main()
