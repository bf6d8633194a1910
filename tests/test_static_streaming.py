"""
Files and listings streamed with back-pressure, on a fake transport whose
client reads only when the test calls read(), and over in-memory TLS.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from jetforce import StaticDirectoryApplication
from jetforce.app.static import FILE_CHUNK_BYTES, FileChunks

from .harness import connect_memory, make_memory_server

PEER = IPv4Address("TCP", "127.0.0.1", 50123)
HOST = IPv4Address("TCP", "127.0.0.1", 1965)

# Bytes the fake transport buffers before it pauses its producer, as
# Twisted's TCP transport does once its write buffer is full.
TRANSPORT_LIMIT = 128 * 1024

# Bound on the read-and-advance rounds of a transfer, so a stuck stream
# fails the test instead of looping forever.
MAX_ROUNDS = 10_000


class SlowClientTransport(StringTransport):
    """A transport whose client takes bytes only through read(); it pauses its producer above a limit."""

    def __init__(self, limit: int = TRANSPORT_LIMIT) -> None:
        super().__init__(hostAddress=HOST, peerAddress=PEER)
        self.limit = limit
        self.received = bytearray()
        self.producer_paused = False
        self.pauses = 0
        self.resumes = 0

    @property
    def buffered(self) -> int:
        return len(self.io.getvalue())

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.buffered > self.limit and self.producer is not None and not self.producer_paused:
            self.producer_paused = True
            self.pauses += 1
            self.producer.pauseProducing()

    def read(self, size: int) -> bytes:
        data = self.io.getvalue()
        delivered, remaining = data[:size], data[size:]
        self.clear()
        self.io.write(remaining)
        self.received += delivered
        if self.producer_paused and self.buffered <= self.limit // 2 and self.producer is not None:
            self.producer_paused = False
            self.resumes += 1
            self.producer.resumeProducing()
        return delivered


class CountingChunks:
    """A body iterator that counts the bytes pulled from the one it wraps."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.pulled = 0

    def __iter__(self) -> CountingChunks:
        return self

    def __next__(self) -> Any:
        chunk = next(self.inner)
        self.pulled += len(chunk)
        return chunk

    def close(self) -> None:
        self.inner.close()


class CountingApplication(StaticDirectoryApplication):
    """StaticDirectoryApplication that keeps the iterator of each file it serves."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bodies: list[CountingChunks] = []

    def load_file(self, path: Path) -> CountingChunks:  # type: ignore[override]
        body = CountingChunks(super().load_file(path))
        self.bodies.append(body)
        return body


def start_request(app: Any, url: str, transport: SlowClientTransport) -> Any:
    """Connect a GeminiProtocol without TLS to transport, send url and return (server, protocol)."""
    server = make_memory_server(app, use_tls=False)
    protocol = server.buildProtocol(PEER)
    protocol.makeConnection(transport)
    protocol.dataReceived(url.encode("utf-8") + b"\r\n")
    return server, protocol


def open_descriptors_for(path: Path) -> list[str]:
    directory = Path("/proc/self/fd")
    names = []
    for entry in directory.iterdir():
        try:
            if os.readlink(entry) == str(path):
                names.append(entry.name)
        except OSError:
            continue
    return names


@pytest.fixture
def big_file(tmp_path: Path) -> Path:
    path = tmp_path / "big.bin"
    # A pattern that differs per block shows misordered or repeated chunks.
    path.write_bytes(b"".join(index.to_bytes(4, "big") * 1024 for index in range(2048)))
    return path


def test_file_reading_pauses_while_client_reads_nothing(big_file: Path) -> None:
    app = CountingApplication(big_file.parent)
    transport = SlowClientTransport()
    server, _ = start_request(app, "gemini://localhost/big.bin", transport)
    body = app.bodies[0]

    assert transport.pauses == 1
    pulled_at_pause = body.pulled
    for _ in range(50):
        server.reactor.advance(1)
    assert body.pulled == pulled_at_pause
    assert body.pulled <= TRANSPORT_LIMIT + FILE_CHUNK_BYTES


def test_file_reading_resumes_when_client_reads(big_file: Path) -> None:
    app = CountingApplication(big_file.parent)
    transport = SlowClientTransport()
    server, _ = start_request(app, "gemini://localhost/big.bin", transport)
    body = app.bodies[0]
    pulled_at_pause = body.pulled

    transport.read(TRANSPORT_LIMIT)
    server.reactor.advance(0)

    assert transport.resumes == 1
    assert body.pulled > pulled_at_pause


def test_slow_client_gets_whole_file_with_bounded_buffering(big_file: Path) -> None:
    app = CountingApplication(big_file.parent)
    transport = SlowClientTransport()
    server, protocol = start_request(app, "gemini://localhost/big.bin", transport)
    body = app.bodies[0]
    header = b"20 application/octet-stream\r\n"

    max_held = 0
    for _ in range(MAX_ROUNDS):
        transport.read(16 * 1024)
        server.reactor.advance(0)
        # Bytes read from the file that the client has not received yet.
        in_flight = body.pulled + len(header) - len(transport.received)
        max_held = max(max_held, in_flight)
        if transport.disconnecting and transport.buffered == 0:
            break
    else:
        pytest.fail(f"transfer did not end within {MAX_ROUNDS} rounds")

    assert bytes(transport.received) == header + big_file.read_bytes()
    assert max_held <= TRANSPORT_LIMIT + FILE_CHUNK_BYTES
    assert transport.pauses > 10
    assert transport.resumes == transport.pauses
    assert body.inner.closed


def test_disconnect_mid_file_closes_it(big_file: Path) -> None:
    app = CountingApplication(big_file.parent)
    transport = SlowClientTransport()
    server, protocol = start_request(app, "gemini://localhost/big.bin", transport)
    transport.read(TRANSPORT_LIMIT)
    server.reactor.advance(0)
    body = app.bodies[0]
    assert open_descriptors_for(big_file) != []

    protocol.connectionLost(Failure(ConnectionLost()))

    assert body.inner.closed
    assert open_descriptors_for(big_file) == []
    assert len(server.access_lines) == 1


def test_disconnect_before_first_read_closes_file(big_file: Path) -> None:
    app = CountingApplication(big_file.parent)
    transport = SlowClientTransport(limit=0)
    server, protocol = start_request(app, "gemini://localhost/big.bin", transport)

    protocol.connectionLost(Failure(ConnectionLost()))

    assert app.bodies[0].inner.closed
    assert open_descriptors_for(big_file) == []


def test_listing_pauses_with_transport(tmp_path: Path) -> None:
    for number in range(3000):
        (tmp_path / f"entry-{number:05d}-{'n' * 60}.txt").write_text("")
    transport = SlowClientTransport(limit=32 * 1024)
    server, _ = start_request(StaticDirectoryApplication(tmp_path), "gemini://localhost/", transport)

    assert transport.pauses == 1
    sent_at_pause = transport.buffered
    server.reactor.advance(1)
    assert transport.buffered == sent_at_pause

    for _ in range(MAX_ROUNDS):
        transport.read(8 * 1024)
        server.reactor.advance(0)
        if transport.disconnecting and transport.buffered == 0:
            break
    else:
        pytest.fail(f"listing did not end within {MAX_ROUNDS} rounds")
    assert bytes(transport.received).count(b"\n=> entry-") == 3000


def test_file_chunks_close_is_idempotent(big_file: Path) -> None:
    chunks = StaticDirectoryApplication(big_file.parent).load_file(big_file)
    assert isinstance(chunks, FileChunks)

    first = next(chunks)
    chunks.close()
    chunks.close()

    assert len(first) == FILE_CHUNK_BYTES
    assert chunks.closed
    assert list(chunks) == []


def test_large_file_over_tls_arrives_intact(big_file: Path) -> None:
    server = make_memory_server(StaticDirectoryApplication(big_file.parent))

    connection = connect_memory(server, b"gemini://localhost/big.bin\r\n")

    assert connection.client.header == b"20 application/octet-stream"
    assert connection.client.body == big_file.read_bytes()
    assert connection.client.close_notify_received
