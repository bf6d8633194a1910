"""contrib/chatroom.py, started as a process; a live stream receives posted messages."""

from __future__ import annotations

import socket
import ssl
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import LOOPBACK_TIMEOUT, RunningServer, gemini_request, start_process

EXAMPLE = Path(__file__).resolve().parent.parent / "contrib" / "chatroom.py"


@pytest.fixture(scope="module")
def chatroom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    work_dir = tmp_path_factory.mktemp("chatroom")
    server = start_process([sys.executable, str(EXAMPLE), "--port", "0"], work_dir)
    yield server
    server.stop()


class LiveStream:
    """A /live connection kept open, read as the server writes."""

    def __init__(self, port: int) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        raw = socket.create_connection(("127.0.0.1", port), timeout=LOOPBACK_TIMEOUT)
        self.socket = context.wrap_socket(raw, server_hostname="localhost")
        self.socket.sendall(b"gemini://localhost/live\r\n")
        self.received = b""

    def read_until(self, marker: bytes) -> bytes:
        # Each recv() waits at most LOOPBACK_TIMEOUT, so a missing message fails the test.
        while marker not in self.received:
            chunk = self.socket.recv(4096)
            if not chunk:
                raise AssertionError(f"stream ended before {marker!r}: {self.received!r}")
            self.received += chunk
        return self.received

    def close(self) -> None:
        self.socket.close()


def listener_count(port: int) -> str:
    body = gemini_request(port, "gemini://localhost/").body.decode()
    return body.split("\n\n")[1]


def wait_for_listener_count(port: int, expected: str) -> None:
    deadline = time.monotonic() + LOOPBACK_TIMEOUT
    while listener_count(port) != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"listener count stayed {listener_count(port)!r}, expected {expected!r}")
        time.sleep(0.05)


def test_chatroom_say_prompts_for_input(chatroom: RunningServer) -> None:
    assert gemini_request(chatroom.port, "gemini://localhost/say").status == 10


def test_chatroom_live_stream_receives_posted_messages(chatroom: RunningServer) -> None:
    first = LiveStream(chatroom.port)
    second = LiveStream(chatroom.port)
    try:
        assert first.read_until(b"as they are posted.\n\n").startswith(b"20 text/gemini\r\n")
        second.read_until(b"as they are posted.\n\n")
        wait_for_listener_count(chatroom.port, "2 listening now.")

        posted = gemini_request(chatroom.port, "gemini://localhost/say?hello%20live%20readers")
        assert (posted.status, posted.meta) == (30, "/")
        gemini_request(chatroom.port, "gemini://localhost/say?second%20message")

        assert b"anonymous: hello live readers\n" in first.read_until(b"second message\n")
        assert b"anonymous: hello live readers\n" in second.read_until(b"second message\n")
    finally:
        first.close()
        second.close()

    # Closing the connections cancels their Deferreds and removes the listeners.
    wait_for_listener_count(chatroom.port, "0 listening now.")
    assert "hello live readers" in gemini_request(chatroom.port, "gemini://localhost/").body.decode()


def test_chatroom_message_is_one_line(chatroom: RunningServer) -> None:
    gemini_request(chatroom.port, "gemini://localhost/say?line%20one%0A%3D%3E%20forged")
    body = gemini_request(chatroom.port, "gemini://localhost/").body.decode()

    assert "anonymous: line one => forged\n" in body
