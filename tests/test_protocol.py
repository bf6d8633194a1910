"""The connection lifecycle in memory: request rules, timeouts, close_notify, logs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.test.iosim import FakeTransport, connect

from jetforce import JetforceApplication, Response, Status
from jetforce.protocol import ConnectionState
from jetforce.wire import MAX_REQUEST_BYTES

from .certs import self_signed, server_credential
from .harness import PEER_ADDRESS, SERVER_ADDRESS, ClientTLSOptions, connect_memory, make_memory_server

ACCESS_LINE = re.compile(
    r'^(?P<addr>\S+) \[\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}\] '
    r'"(?P<url>(?:[^"\\]|\\.)*)" (?P<status>\d{2}|-) "(?P<meta>(?:[^"\\]|\\.)*)" (?P<bytes>\d+)$'
)


@pytest.fixture(scope="module")
def credentials(tmp_path_factory: pytest.TempPathFactory) -> dict:
    directory: Path = tmp_path_factory.mktemp("server")
    certfile, keyfile = server_credential().write(directory, "server")
    return {"certfile": str(certfile), "keyfile": str(keyfile)}


def hello_app() -> JetforceApplication:
    app = JetforceApplication()

    @app.route("")
    def index(request):
        return Response(Status.SUCCESS, "text/gemini", "# Hello\n")

    return app


def serve(credentials, app=None, **options):
    return make_memory_server(app or hello_app(), **credentials, **options)


def test_successful_response_ends_with_close_notify(credentials):
    server = serve(credentials)
    connection = connect_memory(server, b"gemini://localhost/\r\n")

    assert connection.client.received == b"20 text/gemini\r\n# Hello\n"
    assert connection.client.close_notify_received
    assert connection.gemini_protocol.state is ConnectionState.CLOSED


@pytest.mark.parametrize(
    "request_line",
    [
        b"gemini://localhost/" + b"a" * MAX_REQUEST_BYTES + b"\r\n",
        b"\xc3\x28\r\n",
        b"/no/scheme\r\n",
        b"gemini:///no-host\r\n",
        b"gemini://user@localhost/\r\n",
        b"gemini://@localhost/\r\n",
        b"gemini://localhost/#fragment\r\n",
        b"gemini://localhost/\n",
    ],
)
def test_malformed_request_answered_59_with_close_notify(credentials, request_line):
    server = serve(credentials)
    connection = connect_memory(server, request_line)

    assert connection.client.header.startswith(b"59 ")
    assert connection.client.body == b""
    assert connection.client.close_notify_received
    assert len(server.access_lines) == 1
    assert " 59 " in server.access_lines[0]


def test_overlong_request_answered_before_client_stops_sending(credentials):
    server = serve(credentials)
    connection = connect_memory(server, b"gemini://localhost/" + b"a" * 2000)

    # No CRLF was ever sent, so the length alone triggers the response.
    assert connection.client.header == b"59 Request is longer than 1024 bytes"
    assert connection.client.closed


def test_request_of_maximum_length_accepted(credentials):
    server = serve(credentials, app=JetforceApplication())
    url = b"gemini://localhost/" + b"a" * (MAX_REQUEST_BYTES - len(b"gemini://localhost/"))
    connection = connect_memory(server, url + b"\r\n")

    # The application has no route for it, so it responds 50 Not Found.
    assert connection.client.header == b"50 Not Found"


def test_bytes_after_first_line_ignored(credentials):
    server = serve(credentials)
    connection = connect_memory(server, b"gemini://localhost/\r\ngemini://localhost/again\r\n")

    assert connection.client.received == b"20 text/gemini\r\n# Hello\n"
    assert len(server.access_lines) == 1


def test_idle_client_disconnected_after_timeout(credentials):
    server = serve(credentials)
    connection = connect_memory(server, None)

    assert not connection.client.closed
    connection.advance(9.9)
    assert not connection.client.closed

    connection.advance(0.2)
    assert connection.client.closed
    assert connection.client.close_notify_received
    assert connection.client.received == b""
    assert any("timed out after 10 s waiting for the request" in line for line in server.messages)


def test_partial_request_times_out(credentials):
    server = serve(credentials)
    connection = connect_memory(server, b"gemini://localhost/slow")

    connection.advance(10.1)
    assert connection.client.closed
    assert server.access_lines == []


def test_timeout_covers_handshake(credentials):
    """A client that opens TCP and never starts TLS is dropped after the same timeout."""
    server = serve(credentials)
    factory = server.build_transport_factory()
    server_side = factory.buildProtocol(PEER_ADDRESS)
    silent_client = Protocol()
    server_io = FakeTransport(server_side, isServer=True, hostAddress=SERVER_ADDRESS, peerAddress=PEER_ADDRESS)
    client_io = FakeTransport(silent_client, isServer=False)
    pump = connect(server_side, server_io, silent_client, client_io, greet=False, clock=server.reactor)

    server.reactor.advance(10.1)
    pump.flush()
    assert server_io.disconnecting
    assert any("waiting for the TLS handshake" in line for line in server.messages)


def test_configured_request_timeout(credentials):
    server = serve(credentials, request_timeout=2.5)
    connection = connect_memory(server, None)
    connection.advance(2.6)
    assert connection.client.closed


def test_application_exception_answered_42_with_traceback(credentials):
    app = JetforceApplication()

    @app.route("")
    def broken(request):
        raise RuntimeError("database is on fire")

    server = serve(credentials, app=app)
    connection = connect_memory(server, b"gemini://localhost/\r\n")

    assert connection.client.header.startswith(b"42 ")
    assert connection.client.close_notify_received
    traceback_lines = [line for line in server.messages if "Traceback" in line]
    assert traceback_lines
    assert "database is on fire" in traceback_lines[0]
    assert "gemini://localhost/" in traceback_lines[0]


def test_exception_from_application_call_answered_42(credentials):
    def app(environ, send_status):
        raise ValueError("broken before iteration")

    server = serve(credentials, app=app)
    connection = connect_memory(server, b"gemini://localhost/\r\n")

    assert connection.client.header == b"42 Application error"


@pytest.mark.parametrize(
    ("status", "meta"),
    [(20, "text/gemini\r\n20 evil"), (7, "text/gemini"), (100, "x"), ("20", "text/gemini"), (20, "x" * 1025)],
)
def test_invalid_header_never_written(credentials, status, meta):
    def app(environ, send_status):
        send_status(status, meta)
        return [b"body"]

    server = serve(credentials, app=app)
    connection = connect_memory(server, b"gemini://localhost/\r\n")

    assert connection.client.header.startswith(b"40 ")
    assert b"evil" not in connection.client.received
    assert b"body" not in connection.client.received
    assert any("invalid response from application" in line for line in server.messages)


def test_status_may_change_until_first_body_byte(credentials):
    def app(environ, send_status):
        send_status(20, "text/plain")
        yield b""
        send_status(31, "gemini://localhost/moved")

    server = serve(credentials, app=app)
    connection = connect_memory(server, b"gemini://localhost/\r\n")

    assert connection.client.received == b"31 gemini://localhost/moved\r\n"


def test_status_change_after_body_ignored_and_logged(credentials):
    def app(environ, send_status):
        send_status(20, "text/plain")
        yield b"first"
        send_status(51, "too late")
        yield b" second"

    server = serve(credentials, app=app)
    connection = connect_memory(server, b"gemini://localhost/\r\n")

    assert connection.client.received == b"20 text/plain\r\nfirst second"
    assert any("after the body started" in line for line in server.messages)


def test_deferred_chunk_written_when_it_fires(credentials):
    pending: Deferred = Deferred()

    def app(environ, send_status):
        send_status(20, "text/plain")
        yield "before "
        yield pending
        yield " after"

    server = serve(credentials, app=app)
    connection = connect_memory(server, b"gemini://localhost/\r\n")
    assert connection.client.received == b"20 text/plain\r\nbefore "
    assert not connection.client.closed

    pending.callback("middle")
    connection.flush()
    assert connection.client.received == b"20 text/plain\r\nbefore middle after"
    assert connection.client.closed


def test_pending_deferred_cancelled_when_client_leaves(credentials):
    cancelled = []
    pending: Deferred = Deferred(lambda d: cancelled.append(True))

    def app(environ, send_status):
        send_status(20, "text/plain")
        yield "waiting"
        yield pending

    server = serve(credentials, app=app)
    connection = connect_memory(server, b"gemini://localhost/\r\n")
    connection.client.transport.loseConnection()
    connection.flush()

    assert cancelled == [True]
    assert connection.gemini_protocol.state is ConnectionState.CLOSED
    assert any("disconnected during the response" in line for line in server.messages)
    assert len(server.access_lines) == 1


def test_wrong_chunk_type_answered_40(credentials):
    def app(environ, send_status):
        send_status(20, "text/plain")
        yield 12345

    server = serve(credentials, app=app)
    connection = connect_memory(server, b"gemini://localhost/\r\n")

    assert connection.client.header.startswith(b"40 ")
    assert any("expected str or bytes" in line for line in server.messages)


def test_application_without_status_answered_40(credentials):
    server = serve(credentials, app=lambda environ, send_status: [b"body without header"])
    connection = connect_memory(server, b"gemini://localhost/\r\n")

    assert connection.client.header.startswith(b"40 ")
    assert b"body without header" not in connection.client.received


def test_fault_after_body_started_closes_without_second_header(credentials):
    def app(environ, send_status):
        send_status(20, "text/plain")
        yield "partial"
        raise RuntimeError("midway")

    server = serve(credentials, app=app)
    connection = connect_memory(server, b"gemini://localhost/\r\n")

    assert connection.client.received == b"20 text/plain\r\npartial"
    assert connection.client.close_notify_received


def test_access_log_line_format(credentials):
    app = JetforceApplication()

    @app.route("/quote")
    def quote(request):
        return Response(Status.INPUT, 'Say "hi"')

    server = serve(credentials, app=app)
    connect_memory(server, b"gemini://localhost/quote\r\n")

    match = ACCESS_LINE.match(server.access_lines[0])
    assert match is not None, server.access_lines[0]
    assert match["addr"] == "127.0.0.1"
    assert match["url"] == "gemini://localhost/quote"
    assert match["status"] == "10"
    assert match["meta"] == 'Say \\"hi\\"'
    assert int(match["bytes"]) == len(b'10 Say "hi"\r\n')


def test_proxy_request_answered_53(credentials):
    server = serve(credentials)
    for url in (b"gemini://example.org/\r\n", b"https://localhost/\r\n", b"gemini://localhost:1966/\r\n"):
        connection = connect_memory(server, url)
        assert connection.client.header.startswith(b"53 "), url


def test_warning_when_60_answered_but_certificates_not_requested(credentials):
    app = JetforceApplication()

    @app.route("")
    def protected(request):
        return Response(Status.CLIENT_CERTIFICATE_REQUIRED, "Certificate required")

    server = serve(credentials, app=app)
    connect_memory(server, b"gemini://localhost/\r\n")
    connect_memory(server, b"gemini://localhost/\r\n")

    warnings = [line for line in server.messages if "--allow-transient-certs" in line]
    assert len(warnings) == 1


def test_no_warning_for_60_when_transient_certificates_allowed(credentials):
    app = JetforceApplication()

    @app.route("")
    def protected(request):
        return Response(Status.CLIENT_CERTIFICATE_REQUIRED, "Certificate required")

    server = serve(credentials, app=app, allow_transient_certs=True)
    connect_memory(server, b"gemini://localhost/\r\n")
    assert not [line for line in server.messages if "--allow-transient-certs" in line]


def test_plain_tcp_without_tls(credentials):
    server = make_memory_server(hello_app(), use_tls=False)
    connection = connect_memory(server, b"gemini://localhost/\r\n")

    assert connection.client.received == b"20 text/gemini\r\n# Hello\n"
    assert connection.client.closed


def test_environment_without_tls_has_no_tls_keys():
    seen = []

    def app(environ, send_status):
        seen.append(environ)
        send_status(20, "text/plain")
        return []

    server = make_memory_server(app, use_tls=False, port=1965)
    connect_memory(server, b"gemini://localhost/path?a%20b\r\n")

    environ = seen[0]
    assert environ["GEMINI_URL"] == "gemini://localhost/path?a%20b"
    assert environ["QUERY_STRING"] == "a%20b"
    assert environ["SERVER_PORT"] == 1965
    assert environ["SERVER_PROTOCOL"] == "GEMINI"
    assert environ["SERVER_SOFTWARE"].startswith("jetforce/")
    assert environ["HOSTNAME"] == environ["SERVER_NAME"] == "localhost"
    assert environ["REMOTE_ADDR"] == environ["REMOTE_HOST"] == "127.0.0.1"
    assert "TLS_CIPHER" not in environ
    assert environ["client_certificate"] is None


def test_tls_environment_has_cipher_and_version(credentials):
    seen = []

    def app(environ, send_status):
        seen.append(environ)
        send_status(20, "text/plain")
        return []

    server = serve(credentials, app=app, allow_transient_certs=True)
    connect_memory(server, b"gemini://localhost/\r\n", ClientTLSOptions(self_signed()))

    assert seen[0]["TLS_VERSION"] == "TLSv1.3"
    assert seen[0]["TLS_CIPHER"].startswith("TLS_")
