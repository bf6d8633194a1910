"""GeminiServer and GeminiProtocol as applications written for Jetforce 1.0.0 use them."""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock

from jetforce import GeminiProtocol, GeminiServer, JetforceApplication, Response, Status

from .certs import server_credential
from .harness import RecordingServer, connect_memory, make_memory_server

ACCESS_LINE = re.compile(
    r'^127\.0\.0\.1 \[\d{2}/\w{3}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}\] "gemini://localhost/" 20 "text/plain" \d+$'
)


@pytest.fixture(scope="module")
def server_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    certfile, keyfile = server_credential().write(tmp_path_factory.mktemp("server"), "localhost")
    return {"certfile": str(certfile), "keyfile": str(keyfile)}


@pytest.fixture
def hello_app() -> JetforceApplication:
    app = JetforceApplication()
    app.route("")(lambda request: Response(Status.SUCCESS, "text/plain", "hello"))
    return app


@pytest.fixture
def restore_signal_handlers() -> Iterator[None]:
    # run() installs SIGTERM and SIGINT handlers; the test process keeps its own.
    saved = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    yield
    for number, handler in saved.items():
        signal.signal(number, handler)


def test_constructor_defaults(hello_app: JetforceApplication, monkeypatch: pytest.MonkeyPatch) -> None:
    from twisted.internet import reactor

    monkeypatch.delenv("JETFORCE_ALLOW_TRANSIENT_CERTS", raising=False)
    server = GeminiServer(hello_app)

    assert isinstance(server, Factory)
    assert server.app is hello_app
    assert server.reactor is reactor
    assert server.host == "127.0.0.1"
    assert server.port == 1965
    assert server.hostname == "localhost"
    assert server.certfile is None
    assert server.keyfile is None
    assert server.cafile is None
    assert server.capath is None
    assert server.proxy_protocol is False
    assert server.use_tls is True
    assert server.allow_transient_certs is False


def test_constructor_positional_arguments(hello_app: JetforceApplication) -> None:
    reactor = MemoryReactorClock()
    server = GeminiServer(
        hello_app, reactor, "::1", 1966, "example.org", "a.crt", "a.key", "ca.pem", "/etc/ca", True, False, True
    )

    assert server.reactor is reactor
    assert (server.host, server.port, server.hostname) == ("::1", 1966, "example.org")
    assert (server.certfile, server.keyfile, server.cafile, server.capath) == ("a.crt", "a.key", "ca.pem", "/etc/ca")
    assert server.proxy_protocol is True
    assert server.use_tls is False
    assert server.allow_transient_certs is True


@pytest.mark.parametrize(
    "value, expected",
    [("1", True), ("true", True), ("yes", True), ("YES", True), ("0", False), ("no", False), ("", False)],
)
def test_transient_certs_from_environment_when_keyword_absent(
    hello_app: JetforceApplication, monkeypatch: pytest.MonkeyPatch, value: str, expected: bool
) -> None:
    monkeypatch.setenv("JETFORCE_ALLOW_TRANSIENT_CERTS", value)

    assert GeminiServer(hello_app, reactor=MemoryReactorClock()).allow_transient_certs is expected
    # The keyword, when given, wins over the environment.
    assert GeminiServer(hello_app, reactor=MemoryReactorClock(), allow_transient_certs=False).allow_transient_certs is False


def test_initialize_listens_without_running_reactor(
    hello_app: JetforceApplication, server_files: dict[str, str]
) -> None:
    bound: list[IListeningPort] = []

    class BindRecordingServer(GeminiServer):
        def on_bind_interface(self, port: IListeningPort) -> None:
            bound.append(port)

        def log_message(self, message: str) -> None:
            pass

    reactor = MemoryReactorClock()
    server = BindRecordingServer(hello_app, reactor=reactor, host="127.0.0.1", port=1966, **server_files)

    server.initialize()

    assert [(port, interface) for port, _, _, interface in reactor.tcpServers] == [(1966, "127.0.0.1")]
    assert len(bound) == 1
    assert bound[0].getHost().port == 1966
    assert not reactor.hasRun


def test_default_on_bind_interface_logs_address(hello_app: JetforceApplication, server_files: dict[str, str]) -> None:
    server = make_memory_server(hello_app, clock=MemoryReactorClock(), port=1966, **server_files)

    server.initialize()

    assert any("Listening on" in message and ":1966" in message for message in server.messages)


def test_run_listens_then_runs_reactor(
    hello_app: JetforceApplication, server_files: dict[str, str], restore_signal_handlers: None
) -> None:
    reactor = MemoryReactorClock()
    server = make_memory_server(hello_app, clock=reactor, **server_files)

    server.run()

    assert len(reactor.tcpServers) == 1
    assert reactor.hasRun


def test_log_access_hook_receives_one_line_per_request(
    hello_app: JetforceApplication, server_files: dict[str, str]
) -> None:
    lines: list[str] = []

    class AccessRecordingServer(GeminiServer):
        def log_access(self, message: str) -> None:
            lines.append(message)

        def log_message(self, message: str) -> None:
            pass

    server = AccessRecordingServer(hello_app, reactor=Clock(), **server_files)
    connect_memory(server, b"gemini://localhost/\r\n")

    assert len(lines) == 1
    assert ACCESS_LINE.match(lines[0]), lines[0]


def test_log_message_hook_receives_application_traceback(server_files: dict[str, str]) -> None:
    app = JetforceApplication()

    @app.route("")
    def broken(request: Any) -> Response:
        raise ZeroDivisionError("hit counter divided by zero")

    server = make_memory_server(app, **server_files)
    connection = connect_memory(server, b"gemini://localhost/\r\n")

    assert connection.client.header[:2] == b"42"
    assert any("ZeroDivisionError" in message and "Traceback" in message for message in server.messages)


def test_protocol_class_selects_protocol(hello_app: JetforceApplication, server_files: dict[str, str]) -> None:
    created: list[GeminiProtocol] = []

    class CountingProtocol(GeminiProtocol):
        def connectionMade(self) -> None:
            created.append(self)
            super().connectionMade()

    class CountingServer(RecordingServer):
        protocol_class = CountingProtocol

    server = CountingServer(hello_app, reactor=Clock(), **server_files)
    connection = connect_memory(server, b"gemini://localhost/\r\n")

    assert connection.client.header == b"20 text/plain"
    assert len(created) == 1
    assert isinstance(created[0], CountingProtocol)


def test_build_protocol_returns_gemini_protocol(hello_app: JetforceApplication) -> None:
    server = GeminiServer(hello_app, reactor=MemoryReactorClock())

    protocol = server.buildProtocol(None)

    assert isinstance(protocol, GeminiProtocol)
    assert protocol.factory is server
    assert protocol.app is hello_app
