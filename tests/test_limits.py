"""Connection limits in memory: stalled writes, closing, the connection cap, handshake floods."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock

from jetforce.protocol import ConnectionState
from jetforce.server import HANDSHAKE_FAILURE_WINDOW, HANDSHAKE_FAILURES_LOGGED_PER_WINDOW

from .certs import server_credential
from .harness import ClientTLSOptions, connect_memory, make_memory_server


@pytest.fixture(scope="module")
def credentials(tmp_path_factory: pytest.TempPathFactory) -> dict:
    directory: Path = tmp_path_factory.mktemp("limits")
    certfile, keyfile = server_credential().write(directory, "server")
    return {"certfile": str(certfile), "keyfile": str(keyfile)}


def streaming_app(pending: Deferred):
    def app(environ, send_status):
        send_status(20, "text/plain")
        yield "first chunk"
        yield pending

    return app


def test_stalled_reader_aborted_after_write_timeout(credentials):
    server = make_memory_server(streaming_app(Deferred()), write_timeout=5.0, **credentials)
    connection = connect_memory(server, b"gemini://localhost/\r\n")

    # The socket buffer is full: the transport pauses the response.
    connection.pump.serverIO.producer.pauseProducing()
    connection.advance(4.9)
    assert not connection.pump.serverIO.disconnecting

    connection.advance(0.2)
    assert connection.pump.serverIO.disconnecting
    assert any("read nothing of the response" in line for line in server.messages)


def test_resumed_reader_not_aborted(credentials):
    server = make_memory_server(streaming_app(Deferred()), write_timeout=5.0, **credentials)
    connection = connect_memory(server, b"gemini://localhost/\r\n")

    producer = connection.pump.serverIO.producer
    producer.pauseProducing()
    connection.advance(4.0)
    producer.resumeProducing()
    connection.advance(4.0)
    producer.pauseProducing()
    connection.advance(4.0)

    assert not connection.pump.serverIO.disconnecting


def test_waiting_on_application_is_not_a_stall(credentials):
    pending: Deferred = Deferred()
    server = make_memory_server(streaming_app(pending), write_timeout=5.0, **credentials)
    connection = connect_memory(server, b"gemini://localhost/\r\n")

    connection.advance(60.0)
    assert not connection.client.closed
    assert connection.gemini_protocol.state is ConnectionState.RESPONDING

    pending.callback(" and the rest")
    connection.flush()
    assert connection.client.body == b"first chunk and the rest"


def test_close_timer_aborts_undrained_connection(credentials):
    server = make_memory_server(streaming_app(Deferred()), write_timeout=5.0, **credentials)
    connection = connect_memory(server, b"gemini://localhost/\r\n", flush=True)
    protocol = connection.gemini_protocol

    # Closing without the transport ever draining: the TLS layer keeps the
    # connection until the close timer aborts it.
    protocol._set_state(ConnectionState.CLOSING)
    protocol._start_timer(server.write_timeout, protocol._close_timed_out)
    connection.advance(5.1)
    assert any("did not read the end of its response" in line for line in server.messages)


def test_connection_cap_pauses_and_resumes_accepting(credentials):
    reactor = MemoryReactorClock()
    server = make_memory_server(streaming_app(Deferred()), clock=reactor, max_connections=2, **credentials)
    port = object()
    server.listening_ports.append(port)  # type: ignore[arg-type]
    reactor.addReader(port)

    first = connect_memory(server, None)
    assert port in reactor.readers
    second = connect_memory(server, None)
    assert port not in reactor.readers
    warnings = [line for line in server.messages if "Reached 2 open connections" in line]
    assert len(warnings) == 1

    first.client.transport.loseConnection()
    first.flush()
    assert port in reactor.readers
    assert any("Accepting connections again (1 open)" in line for line in server.messages)
    assert second.gemini_protocol in server.connections


def test_connection_count_returns_to_zero(credentials):
    server = make_memory_server(streaming_app(Deferred()), **credentials)
    connections = [connect_memory(server, b"gemini://localhost/\r\n") for _ in range(5)]
    assert len(server.connections) == 5

    for connection in connections:
        connection.client.transport.loseConnection()
        connection.flush()
    assert server.connections == set()


def test_handshake_failure_flood_summarised(credentials):
    from OpenSSL import SSL

    server = make_memory_server(streaming_app(Deferred()), **credentials)
    attempts = HANDSHAKE_FAILURES_LOGGED_PER_WINDOW + 25
    for _ in range(attempts):
        options = ClientTLSOptions(None)
        # A client that offers only TLS 1.1 cannot complete a handshake.
        options.context.set_min_proto_version(SSL.TLS1_1_VERSION)
        options.context.set_max_proto_version(SSL.TLS1_1_VERSION)
        connect_memory(server, b"gemini://localhost/\r\n", options)

    one_by_one = [line for line in server.messages if "TLS handshake failed" in line]
    assert len(one_by_one) == HANDSHAKE_FAILURES_LOGGED_PER_WINDOW

    server.reactor.advance(HANDSHAKE_FAILURE_WINDOW)
    summaries = [line for line in server.messages if "25 more TLS handshakes failed" in line]
    assert len(summaries) == 1


def test_garbage_handshake_leaves_nothing_behind(credentials):
    from twisted.internet.protocol import Protocol
    from twisted.test.iosim import FakeTransport, connect

    from .harness import PEER_ADDRESS, SERVER_ADDRESS

    server = make_memory_server(streaming_app(Deferred()), **credentials)
    for payload in (b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", bytes(range(256)) * 4):
        factory = server.build_transport_factory()
        server_side = factory.buildProtocol(PEER_ADDRESS)

        class Sender(Protocol):
            def connectionMade(self) -> None:
                self.transport.write(payload)

        client = Sender()
        server_io = FakeTransport(server_side, isServer=True, hostAddress=SERVER_ADDRESS, peerAddress=PEER_ADDRESS)
        client_io = FakeTransport(client, isServer=False)
        connect(server_side, server_io, client, client_io, greet=True, clock=server.reactor)

    assert server.connections == set()
    # Only the server-wide summary of handshake failures may still be pending.
    pending = [call for call in server.reactor.getDelayedCalls() if call.active()]
    assert [call.func.__name__ for call in pending] == ["_summarise_handshake_failures"]
    assert server.access_lines == []
