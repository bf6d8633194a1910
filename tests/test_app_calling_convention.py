"""
The application calling convention, through a real server in memory.

An application is app(environ, send_status) returning an iterable of str,
bytes or Deferred chunks. These tests drive it through GeminiServer over
in-memory TLS with a Clock, so Deferreds that fire "later" fire when the
test advances the clock.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed

from jetforce import DeferredResponse, JetforceApplication, Response, Status

from .certs import server_credential
from .harness import MemoryConnection, RecordingServer, connect_memory, make_memory_server

REQUEST = b"gemini://localhost/\r\n"


@pytest.fixture(scope="module")
def server_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    certfile, keyfile = server_credential().write(tmp_path_factory.mktemp("server"), "localhost")
    return {"certfile": str(certfile), "keyfile": str(keyfile)}


@pytest.fixture
def serve(server_files: dict[str, str]) -> Any:
    """Return a function that builds a recording server for an app and sends it one request."""

    def serve(app: Any, request: bytes = REQUEST) -> tuple[RecordingServer, MemoryConnection]:
        server = make_memory_server(app, **server_files)
        return server, connect_memory(server, request)

    return serve


@pytest.fixture
def server_for(server_files: dict[str, str]) -> Any:
    """Return a function that builds a recording server for an app, to connect later."""
    return lambda app: make_memory_server(app, **server_files)


def single_route_app(handler: Any) -> JetforceApplication:
    app = JetforceApplication()
    app.route("")(handler)
    return app


# Bodies of every accepted shape.


@pytest.mark.parametrize(
    "make_body, expected",
    [
        pytest.param(lambda: "héllo", "héllo".encode(), id="str"),
        pytest.param(lambda: b"\x00\xff", b"\x00\xff", id="bytes"),
        pytest.param(lambda: ["a", b"b", "c"], b"abc", id="list-of-mixed"),
        pytest.param(lambda: (chunk for chunk in ["x", "y"]), b"xy", id="generator"),
        pytest.param(lambda: succeed(b"fired"), b"fired", id="fired-deferred"),
        pytest.param(lambda: [succeed("one"), "two", succeed(b"three")], b"onetwothree", id="deferred-chunks"),
        pytest.param(lambda: None, b"", id="none"),
    ],
)
def test_response_body_shapes(serve: Any, make_body: Any, expected: bytes) -> None:
    _, connection = serve(single_route_app(lambda request: Response(Status.SUCCESS, "text/plain", make_body())))

    assert connection.client.header == b"20 text/plain"
    assert connection.client.body == expected
    assert connection.client.close_notify_received


def test_plain_callable_application(serve: Any) -> None:
    def app(environ: dict[str, Any], send_status: Any) -> list[bytes]:
        send_status(20, "text/gemini")
        return [b"# ", environ["GEMINI_URL"].encode()]

    _, connection = serve(app)

    assert connection.client.header == b"20 text/gemini"
    assert connection.client.body == b"# gemini://localhost/"


# The header can change until the first body byte.


def test_status_changed_before_first_body_byte(serve: Any) -> None:
    def app(environ: dict[str, Any], send_status: Any) -> Any:
        send_status(Status.SUCCESS, "text/gemini")
        # Empty chunks write nothing, so the status may still change.
        yield ""
        yield b""
        send_status(Status.TEMPORARY_FAILURE, "Database is busy")

    _, connection = serve(app)

    assert connection.client.header == b"40 Database is busy"
    assert connection.client.body == b""


def test_status_changed_after_first_body_byte_is_ignored(serve: Any) -> None:
    def app(environ: dict[str, Any], send_status: Any) -> Any:
        send_status(Status.SUCCESS, "text/plain")
        yield "partial"
        send_status(Status.TEMPORARY_FAILURE, "Too late")
        yield " body"

    server, connection = serve(app)

    assert connection.client.header == b"20 text/plain"
    assert connection.client.body == b"partial body"
    assert any("after the body started" in message for message in server.messages)


def test_status_sent_while_waiting_for_deferred_chunk(serve: Any) -> None:
    waiting: Deferred[str] = Deferred()

    def app(environ: dict[str, Any], send_status: Any) -> Any:
        send_status(Status.SUCCESS, "text/plain")
        yield waiting
        send_status(Status.NOT_FOUND, "Gone while waiting")

    server, connection = serve(app)
    assert connection.client.received == b""

    # The Deferred fires with nothing, so the header is still open.
    waiting.callback(None)
    connection.flush()

    assert connection.client.header == b"51 Gone while waiting"


# Deferreds that fire later.


def test_deferred_chunk_written_when_it_fires(serve: Any) -> None:
    later: Deferred[bytes] = Deferred()
    server, connection = serve(single_route_app(lambda request: Response(20, "text/plain", ["now ", later, " end"])))

    # Nothing is written before the first non-empty chunk is complete,
    # because the header goes out with it; here that is "now ".
    assert connection.client.received == b"20 text/plain\r\nnow "
    assert not connection.client.closed

    server.reactor.callLater(30, later.callback, b"later")
    connection.advance(30)

    assert connection.client.body == b"now later end"
    assert connection.client.closed


def test_handler_returning_deferred_long_poll(server_for: Any) -> None:
    def handler(request: Any) -> Deferred[Response]:
        result: Deferred[Response] = Deferred()
        server.reactor.callLater(120, result.callback, Response(Status.SUCCESS, "text/plain", "news"))
        return result

    server = server_for(single_route_app(handler))
    connection = connect_memory(server, REQUEST)
    assert connection.client.received == b""

    connection.advance(120)

    assert connection.client.header == b"20 text/plain"
    assert connection.client.body == b"news"


def test_deferred_response_header_comes_later(serve: Any) -> None:
    header: Deferred[tuple[int, str]] = Deferred()
    server, connection = serve(single_route_app(lambda request: DeferredResponse(header, ["a", "b"])))
    assert connection.client.received == b""

    header.callback((Status.REDIRECT_TEMPORARY, "/elsewhere"))
    connection.flush()

    assert connection.client.header == b"30 /elsewhere"
    assert connection.client.body == b"ab"


# Disconnects cancel what the application waits on.


@pytest.mark.parametrize("close", ["close_notify", "abort"])
def test_disconnect_cancels_pending_deferred(serve: Any, close: str) -> None:
    cancelled: list[bool] = []
    cleaned_up: list[bool] = []

    def app(environ: dict[str, Any], send_status: Any) -> Any:
        send_status(Status.SUCCESS, "text/plain")
        try:
            yield "first line\n"
            yield Deferred(lambda deferred: cancelled.append(True))
            yield "never sent"
        finally:
            cleaned_up.append(True)

    server, connection = serve(app)
    assert connection.client.body == b"first line\n"

    if close == "close_notify":
        connection.client.transport.loseConnection()
    else:
        connection.pump.clientIO.loseConnection()
    connection.flush()

    assert cancelled == [True]
    assert cleaned_up == [True]
    assert len(server.access_lines) == 1


def test_disconnect_cancels_handler_deferred(serve: Any) -> None:
    cancelled: list[bool] = []
    _, connection = serve(single_route_app(lambda request: Deferred(lambda deferred: cancelled.append(True))))

    connection.client.transport.loseConnection()
    connection.flush()

    assert cancelled == [True]


# Faults in the application.


def test_exception_in_handler_answers_42_with_traceback(serve: Any) -> None:
    def handler(request: Any) -> Response:
        raise KeyError("missing-guestbook-table")

    server, connection = serve(single_route_app(handler))

    assert connection.client.header[:2] == b"42"
    assert connection.client.close_notify_received
    log = "\n".join(server.messages)
    assert "Traceback" in log
    assert "missing-guestbook-table" in log
    assert " 42 " in server.access_lines[0]


def test_exception_in_body_before_first_byte_answers_42(serve: Any) -> None:
    def body() -> Any:
        raise RuntimeError("generator failed")
        yield "unreachable"

    server, connection = serve(single_route_app(lambda request: Response(20, "text/plain", body())))

    assert connection.client.header[:2] == b"42"
    assert "generator failed" in "\n".join(server.messages)


def test_failed_deferred_chunk_answers_42(serve: Any) -> None:
    failing: Deferred[bytes] = Deferred()
    server, connection = serve(single_route_app(lambda request: Response(20, "text/plain", [failing])))

    failing.errback(ConnectionRefusedError("upstream down"))
    connection.flush()

    assert connection.client.header[:2] == b"42"
    assert "upstream down" in "\n".join(server.messages)


@pytest.mark.parametrize(
    "make_result",
    [
        pytest.param(lambda: None, id="none"),
        pytest.param(lambda: "20 text/gemini", id="str"),
        pytest.param(lambda: (20, "text/gemini"), id="tuple"),
        pytest.param(lambda: succeed(42), id="deferred-firing-int"),
    ],
)
def test_handler_wrong_type_answers_42(serve: Any, make_result: Any) -> None:
    def forgot_the_response(request: Any) -> Any:
        return make_result()

    server, connection = serve(single_route_app(forgot_the_response))

    assert connection.client.header[:2] == b"42"
    log = "\n".join(server.messages)
    assert "forgot_the_response" in log
    assert "expected a Response" in log


# The reactor keeps turning while a body is pulled.


def count_chunks_pulled_before_reactor_turn(server_for: Any, make_chunk: Any, count: int) -> int:
    """Serve a body of count chunks and return how many were pulled before a callLater(0) could run."""
    pulled_before_turn = 0
    turn_passed: list[bool] = []

    def body() -> Any:
        nonlocal pulled_before_turn
        server.reactor.callLater(0, turn_passed.append, True)
        for _ in range(count):
            if not turn_passed:
                pulled_before_turn += 1
            yield make_chunk()

    server = server_for(single_route_app(lambda request: Response(20, "text/plain", body())))
    connection = connect_memory(server, REQUEST)
    assert connection.client.closed
    return pulled_before_turn


def test_large_body_yields_to_reactor(server_for: Any) -> None:
    pulled = count_chunks_pulled_before_reactor_turn(server_for, lambda: b"x" * 65536, 64)
    assert pulled < 64


def test_empty_chunks_yield_to_reactor(server_for: Any) -> None:
    pulled = count_chunks_pulled_before_reactor_turn(server_for, lambda: "", 50_000)
    assert pulled < 50_000


def test_fired_deferred_chunks_yield_to_reactor(server_for: Any) -> None:
    pulled = count_chunks_pulled_before_reactor_turn(server_for, lambda: succeed(b"x" * 65536), 64)
    assert pulled < 64
