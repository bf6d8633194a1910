#!/usr/bin/env python3
"""
A live chat room: /live streams every new message to each open connection.

    python contrib/chatroom.py

Routes:
    /       recent messages and the number of open /live streams
    /live   a response that never ends: recent messages, then each new one
    /say    asks for a message (status 10), posts it and redirects to /

Each /live connection waits on a Deferred for its next message, so any
number of listeners cost no thread and no polling. When a client closes its
connection, the server cancels that Deferred and closes the body generator.
The canceller and the generator's finally block then remove the listener.
"""

from __future__ import annotations

import argparse
import datetime
from collections import deque
from collections.abc import Iterator

from twisted.internet.defer import Deferred, succeed

from jetforce import GeminiServer, JetforceApplication, Request, Response, Status

# Messages kept for the index page and for new listeners.
HISTORY_SIZE = 20

# Messages queued for a listener whose client reads slowly; older ones are
# dropped, so a stalled client cannot make the server hold unbounded memory.
MAX_QUEUED_MESSAGES = 100

MAX_MESSAGE_CHARACTERS = 300


class Listener:
    """One open /live stream: the messages it has not written yet, or the Deferred it waits on."""

    def __init__(self) -> None:
        self.queued: deque[str] = deque(maxlen=MAX_QUEUED_MESSAGES)
        self.waiting: Deferred[str] | None = None

    def next_message(self) -> Deferred[str]:
        if self.queued:
            return succeed(self.queued.popleft())
        self.waiting = Deferred(self._cancel)
        return self.waiting

    def deliver(self, line: str) -> None:
        waiting, self.waiting = self.waiting, None
        if waiting is not None:
            waiting.callback(line)
        else:
            self.queued.append(line)

    def _cancel(self, deferred: Deferred[str]) -> None:
        # Called by Deferred.cancel() when the client has gone away.
        self.waiting = None


class ChatRoom:
    def __init__(self) -> None:
        self.history: deque[str] = deque(maxlen=HISTORY_SIZE)
        self.listeners: set[Listener] = set()

    def post(self, author: str, text: str) -> None:
        time = datetime.datetime.now(datetime.timezone.utc).strftime("%H:%M")
        line = f"[{time}] {author}: {text}\n"
        self.history.append(line)
        # A listener's callback may write to its client and ask for the next
        # message at once, so iterate over a copy.
        for listener in list(self.listeners):
            listener.deliver(line)

    def stream(self) -> Iterator[str | Deferred[str]]:
        """Yield the recent history, then each new message as a Deferred, until the client leaves."""
        listener = Listener()
        self.listeners.add(listener)
        try:
            yield "# Live chat\n\nNew messages appear below as they are posted.\n\n"
            yield "".join(self.history)
            while True:
                yield listener.next_message()
        finally:
            # Runs when the server closes this generator after a disconnect.
            self.listeners.discard(listener)


def build_app(room: ChatRoom) -> JetforceApplication:
    app = JetforceApplication()

    @app.route("")
    def index(request: Request) -> Response:
        lines = [
            "# Chat room\n\n",
            f"{len(room.listeners)} listening now.\n\n",
            "=> /live Join the live stream\n",
            "=> /say Say something\n\n",
            "## Recent messages\n\n",
            "".join(room.history) or "No messages yet.\n",
        ]
        return Response(Status.SUCCESS, "text/gemini", "".join(lines))

    @app.route("/live")
    def live(request: Request) -> Response:
        return Response(Status.SUCCESS, "text/gemini", room.stream())

    @app.route("/say")
    def say(request: Request) -> Response:
        # Each message is one line: line breaks would let a visitor forge
        # lines from others.
        text = " ".join(request.query.split())
        if not text:
            return Response(Status.INPUT, "Message")
        if len(text) > MAX_MESSAGE_CHARACTERS:
            return Response(Status.INPUT, f"Please keep it under {MAX_MESSAGE_CHARACTERS} characters")
        author = request.environ.get("REMOTE_USER") or "anonymous"
        room.post(author, text)
        return Response(Status.REDIRECT_TEMPORARY, "/")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve a chat room that streams new messages to open connections.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=1965, help="TCP port; 0 picks a free one (default: 1965)")
    parser.add_argument("--hostname", default="localhost", help="hostname in request URLs (default: localhost)")
    args = parser.parse_args()

    app = build_app(ChatRoom())
    GeminiServer(app, host=args.host, port=args.port, hostname=args.hostname).run()


if __name__ == "__main__":
    main()
