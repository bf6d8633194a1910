"""
CGI scripts with a fake process transport and a Clock: header checks,
timeouts, SIGTERM then SIGKILL, reaping without SIGCHLD, stderr, the
environment and back-pressure, deterministically and without processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent
from twisted.python.failure import Failure

from jetforce import StaticDirectoryApplication
from jetforce.app import cgi
from jetforce.app.cgi import (
    KILL_GRACE_PERIOD,
    MAX_BUFFERED_BYTES,
    MAX_STDERR_LINE_BYTES,
    MAX_STDERR_LINES_LOGGED,
    SAFE_PATH,
    ScriptState,
    build_cgi_environment,
    run_cgi_script,
    spawn_command,
)
from jetforce.errors import CGIError

from .certs import self_signed
from .harness import CGI_ENVIRONMENT_KEYS, ClientTLSOptions, connect_memory, make_memory_server
from .test_static_streaming import PEER, SlowClientTransport

# The size of one read from a pipe in Twisted's process reader.
PIPE_READ_BYTES = 8192


class FakeProcess:
    """Stand-in for Twisted's Process transport, recording the calls the protocol makes."""

    def __init__(self, protocol: Any, clock: Clock, pid: int) -> None:
        self.protocol = protocol
        self.clock = clock
        self.pid = pid
        self.signals: list[str] = []
        self.closed: set[int] = set()
        self.paused = False
        self.pauses = 0
        self.resumes = 0
        self.reap_attempts = 0
        self.exit_reason: BaseException | None = None
        self.reaped = False

    # What the protocol calls.

    def closeStdin(self) -> None:
        self.closed.add(0)

    def closeStdout(self) -> None:
        if 1 in self.closed:
            return
        self.closed.add(1)
        # Twisted reports the closed pipe one reactor turn later.
        self.clock.callLater(0, self.protocol.childConnectionLost, 1)

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False
        self.resumes += 1

    def signalProcess(self, name: str) -> None:
        if self.reaped:
            raise ProcessExitedAlready()
        self.signals.append(name)

    def reapProcess(self) -> None:
        self.reap_attempts += 1
        if self.exit_reason is not None and not self.reaped:
            self.reaped = True
            self.protocol.processExited(Failure(self.exit_reason))

    # What the script does.

    def write(self, data: bytes) -> None:
        assert 1 not in self.closed, "the script writes to a closed pipe"
        self.protocol.childDataReceived(1, data)

    def write_stderr(self, data: bytes) -> None:
        self.protocol.childDataReceived(2, data)

    def close_stdout(self) -> None:
        self.closed.add(1)
        self.protocol.childConnectionLost(1)

    def close_stderr(self) -> None:
        self.closed.add(2)
        self.protocol.childConnectionLost(2)

    def exit(self, code: int = 0, signal: int | None = None) -> None:
        """End the process; like a reactor without SIGCHLD, only the next reapProcess() reports it."""
        if code == 0 and signal is None:
            self.exit_reason = ProcessDone(0)
        else:
            self.exit_reason = ProcessTerminated(exitCode=None if signal else code, signal=signal)


@dataclass
class Spawned:
    process: FakeProcess
    executable: str
    args: list[str]
    env: dict[str, str]
    path: str | None


class FakeProcessReactor(Clock):
    """A Clock that also spawns FakeProcesses."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[Spawned] = []

    def spawnProcess(self, protocol: Any, executable: str, args: Any = (), env: Any = None, path: Any = None, **_: Any) -> FakeProcess:
        process = FakeProcess(protocol, self, pid=40000 + len(self.spawned))
        self.spawned.append(Spawned(process, executable, list(args), dict(env), path))
        protocol.makeConnection(process)
        return process


@dataclass
class Run:
    """One script started with run_cgi_script(), with what it produced so far."""

    reactor: FakeProcessReactor
    process: FakeProcess
    protocol: cgi.CGIProcessProtocol
    body: Any
    headers: list[tuple[int, str]] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    # The Deferred of the last chunk pull() found not ready yet.
    pending: Deferred[Any] | None = None

    def pull(self) -> list[bytes | None]:
        """Pull the chunks available now, as the server does, ending at None or a pending chunk."""
        chunks: list[bytes | None] = []
        for _ in range(10_000):
            results: list[Any] = []
            deferred = next(self.body)
            deferred.addBoth(results.append)
            if not results:
                self.pending = deferred
                return chunks
            chunks.append(results[0])
            if results[0] is None:
                return chunks
        raise AssertionError("more than 10000 chunks available")


def start_script(timeout: float = 10.0, environ: dict[str, Any] | None = None) -> Run:
    reactor = FakeProcessReactor()
    lines: list[str] = []
    logger = Logger(namespace="test.cgi", observer=lambda event: lines.append(formatEvent(event)))
    environ = environ or {"SCRIPT_NAME": "/cgi-bin/test", "REMOTE_ADDR": "192.0.2.7"}
    response = run_cgi_script(reactor, "/srv/gemini/cgi-bin/test", environ, timeout=timeout, logger=logger)
    spawned = reactor.spawned[0]
    run = Run(reactor, spawned.process, spawned.process.protocol, response.body, log=lines)
    response.send_status.addCallbacks(run.headers.append, run.failures.append)
    return run


# The header.


def test_header_and_body_relayed() -> None:
    run = start_script()

    run.process.write(b"20 text/gemini\r\n# Title\n")
    run.process.write(b"more\n")
    run.process.close_stdout()

    assert run.headers == [(20, "text/gemini")]
    assert run.pull() == [b"# Title\n", b"more\n", None]
    assert run.process.closed == {0, 1}


def test_header_split_across_writes() -> None:
    run = start_script()

    for piece in (b"2", b"0 te", b"xt/pl", b"ain\r", b"\nbody"):
        run.process.write(piece)

    assert run.headers == [(20, "text/plain")]
    assert run.pull() == [b"body"]


@pytest.mark.parametrize(
    ("line", "status", "meta"),
    [
        (b"20 text/gemini\r\n", 20, "text/gemini"),
        (b"20 text/gemini\n", 20, "text/gemini"),
        (b"20\r\n", 20, ""),
        (b"31 gemini://localhost/elsewhere\r\n", 31, "gemini://localhost/elsewhere"),
        (b"10 What is your name?\r\n", 10, "What is your name?"),
        (b"20 " + b"m" * 1024 + b"\r\n", 20, "m" * 1024),
        (b"20 text/plain; charset=utf-8\r\n", 20, "text/plain; charset=utf-8"),
        ("20 text/gemini; lang=fr ça\r\n".encode(), 20, "text/gemini; lang=fr ça"),
    ],
)
def test_valid_header_accepted(line: bytes, status: int, meta: str) -> None:
    run = start_script()

    run.process.write(line)

    assert run.headers == [(status, meta)]
    assert run.protocol.state is ScriptState.RELAYING_BODY


@pytest.mark.parametrize(
    "line",
    [
        b"\r\n",
        b"2 text/gemini\r\n",
        b"200 text/gemini\r\n",
        b"20text/gemini\r\n",
        b"20\ttext/gemini\r\n",
        b"ab text/gemini\r\n",
        b"\xef\xbb\xbf20 text/gemini\r\n",
        b"05 text/gemini\r\n",
        b"99 text/gemini\r\n",
        b"20 text/\x01gemini\r\n",
        b"20 text/gemini\r\r\n",
        b"20 text\x7f\r\n",
        b"20 \xff\xfe\r\n",
        b"20 " + b"m" * 1025 + b"\r\n",
        b"Content-Type: text/html\r\n\r\n",
    ],
)
def test_invalid_header_answered_42(line: bytes) -> None:
    run = start_script()

    run.process.write(line + b"body that must not be relayed")

    assert run.headers == []
    [failure] = run.failures
    assert isinstance(failure.value, CGIError)
    assert failure.value.status == 42
    assert "invalid header" in failure.value.meta
    assert run.process.signals == ["TERM"]
    assert 1 in run.process.closed


def test_huge_header_rejected_before_newline() -> None:
    run = start_script()

    for _ in range(8):
        if 1 in run.process.closed:
            break
        run.process.write(b"2" * 512)

    [failure] = run.failures
    assert "header line longer than" in failure.value.meta
    assert run.process.signals == ["TERM"]
    assert len(run.protocol._header_buffer) <= 2048


def test_no_output_answered_42_with_exit_status_logged() -> None:
    run = start_script()

    run.process.exit(3)
    run.process.close_stdout()

    [failure] = run.failures
    assert failure.value.meta == "CGI script /cgi-bin/test failed: no output on stdout"
    assert run.process.signals == []
    assert any(
        "CGI script /cgi-bin/test (pid 40000) exited with status 3; responded 42: no output on stdout" in line
        for line in run.log
    )


def test_output_ending_inside_header_answered_42() -> None:
    run = start_script()

    run.process.write(b"20 text/gem")
    run.process.exit(0)
    run.process.close_stdout()

    [failure] = run.failures
    assert "output ended inside the header line" in failure.value.meta


def test_header_timeout_answers_42_then_terminates() -> None:
    run = start_script(timeout=10)
    run.reactor.advance(9.9)
    assert run.failures == []

    run.reactor.advance(0.1)

    [failure] = run.failures
    assert failure.value.meta == "CGI script /cgi-bin/test failed: no header within 10 s"
    assert run.process.signals == ["TERM"]
    assert 1 in run.process.closed


def test_script_ignoring_sigterm_gets_sigkill() -> None:
    run = start_script(timeout=10)
    run.reactor.advance(10)

    run.reactor.advance(KILL_GRACE_PERIOD)
    run.process.exit(signal=9)
    run.reactor.advance(10)

    assert run.process.signals == ["TERM", "KILL"]
    assert run.process.reaped
    assert any("still running 5 s after SIGTERM: sent SIGKILL" in line for line in run.log)
    assert any("(pid 40000) was ended by signal 9; responded 42: no header within 10 s" in line for line in run.log)


def test_script_ending_on_sigterm_gets_no_sigkill() -> None:
    run = start_script(timeout=10)
    run.reactor.advance(10)

    run.process.exit(signal=15)
    run.reactor.advance(KILL_GRACE_PERIOD * 4)

    assert run.process.signals == ["TERM"]
    assert run.process.reaped
    assert run.reactor.getDelayedCalls() == []


def test_header_in_time_cancels_timeout() -> None:
    run = start_script(timeout=10)

    run.process.write(b"20 text/plain\r\n")
    run.reactor.advance(60)

    assert run.failures == []
    assert run.process.signals == []


# The end of the response and reaping.


def test_response_ends_when_stdout_closes_before_exit() -> None:
    run = start_script()
    run.process.write(b"20 text/plain\r\ndone\n")

    run.process.close_stdout()

    assert run.pull() == [b"done\n", None]
    assert not run.process.reaped
    assert run.process.signals == []


def test_exited_script_reaped_by_polling() -> None:
    run = start_script()
    run.process.write(b"20 text/plain\r\n")
    run.process.close_stdout()
    run.pull()
    run.reactor.advance(1)
    assert not run.process.reaped

    run.process.exit(0)
    run.reactor.advance(cgi.MAX_REAP_INTERVAL)

    assert run.process.reaped
    assert run.reactor.getDelayedCalls() == []
    assert run.log == []


def test_reap_polling_backs_off() -> None:
    run = start_script()
    run.process.write(b"20 text/plain\r\n")
    run.process.close_stdout()

    for _ in range(60):
        run.reactor.advance(1)

    # Doubling from 0.05 s to at most 5 s: a few fast polls, then one every 5 s.
    assert 12 <= run.process.reap_attempts <= 25
    assert len(run.reactor.getDelayedCalls()) == 1


def test_nonzero_exit_after_response_logged() -> None:
    run = start_script()
    run.process.write(b"20 text/plain\r\n")
    run.process.close_stdout()

    run.process.exit(2)
    run.reactor.advance(cgi.MAX_REAP_INTERVAL)

    assert any("CGI script /cgi-bin/test (pid 40000) exited with status 2" in line for line in run.log)


# Abandoning a script.


def test_cancelled_chunk_terminates_script() -> None:
    run = start_script()
    run.process.write(b"20 text/plain\r\n")
    assert run.pull() == []

    run.pending.cancel()

    assert run.protocol.state is ScriptState.ABANDONED
    assert run.process.signals == ["TERM"]
    assert 1 in run.process.closed
    run.reactor.advance(KILL_GRACE_PERIOD)
    assert run.process.signals == ["TERM", "KILL"]


def test_cancelled_header_terminates_script() -> None:
    reactor = FakeProcessReactor()
    response = run_cgi_script(reactor, "/srv/cgi-bin/x", {"SCRIPT_NAME": "/cgi-bin/x"}, timeout=10)
    failures: list[Failure] = []
    response.send_status.addErrback(failures.append)

    response.send_status.cancel()

    process = reactor.spawned[0].process
    assert failures[0].check(CancelledError)
    assert process.signals == ["TERM"]


def test_closing_body_early_terminates_script() -> None:
    run = start_script()
    run.process.write(b"20 text/plain\r\nfirst")
    assert run.pull() == [b"first"]

    run.body.close()

    assert run.process.signals == ["TERM"]


def test_output_after_abandon_is_discarded() -> None:
    run = start_script()
    run.process.write(b"20 text/plain\r\n")
    run.pull()
    run.pending.cancel()

    run.protocol.childDataReceived(1, b"x" * MAX_BUFFERED_BYTES * 2)

    assert run.protocol._buffered == 0
    assert not run.process.paused


def test_finished_script_is_not_signalled_when_client_leaves() -> None:
    run = start_script()
    run.process.write(b"20 text/plain\r\n" + b"x" * 100)
    run.process.close_stdout()

    run.body.close()

    assert run.process.signals == []


# Back-pressure.


def test_pipe_reading_pauses_and_resumes() -> None:
    run = start_script()
    run.process.write(b"20 text/plain\r\n")

    written = 0
    while not run.process.paused and written < 10 * MAX_BUFFERED_BYTES:
        run.process.write(b"y" * PIPE_READ_BYTES)
        written += PIPE_READ_BYTES

    assert run.process.paused
    assert run.protocol._buffered <= MAX_BUFFERED_BYTES + PIPE_READ_BYTES

    drained = 0
    while run.process.paused and drained < written:
        chunk = run.pull()[0]
        drained += len(chunk)
    assert not run.process.paused
    assert run.process.resumes == 1
    assert run.protocol._buffered <= MAX_BUFFERED_BYTES // 2


# stderr.


def test_stderr_lines_logged_with_script_name() -> None:
    run = start_script()

    run.process.write_stderr(b"first line\nsecond ")
    run.process.write_stderr(b"line\r\nescape \x1b[31m red\n")
    run.process.write_stderr(b"unfinished")
    run.process.close_stderr()

    stderr_lines = [line for line in run.log if "stderr:" in line]
    assert stderr_lines == [
        "192.0.2.7 CGI script /cgi-bin/test (pid 40000) stderr: first line",
        "192.0.2.7 CGI script /cgi-bin/test (pid 40000) stderr: second line",
        "192.0.2.7 CGI script /cgi-bin/test (pid 40000) stderr: escape \\x1b[31m red",
        "192.0.2.7 CGI script /cgi-bin/test (pid 40000) stderr: unfinished",
    ]


def test_long_stderr_line_logged_in_pieces() -> None:
    run = start_script()

    run.process.write_stderr(b"z" * (MAX_STDERR_LINE_BYTES * 2 + 10))
    run.process.close_stderr()

    lengths = [len(line.rpartition("stderr: ")[2]) for line in run.log if "stderr:" in line]
    assert lengths == [MAX_STDERR_LINE_BYTES, MAX_STDERR_LINE_BYTES, 10]


def test_stderr_flood_is_counted() -> None:
    run = start_script()

    run.process.write_stderr(b"again\n" * (MAX_STDERR_LINES_LOGGED + 50))
    run.process.close_stderr()

    assert sum("stderr: again" in line for line in run.log) == MAX_STDERR_LINES_LOGGED
    assert any("50 more lines of stderr were not logged" in line for line in run.log)


# The environment.

REQUEST_ENVIRON = {
    "GEMINI_URL": "gemini://localhost/cgi-bin/test/extra?q=a%20b",
    "HOSTNAME": "localhost",
    "SERVER_NAME": "localhost",
    "SERVER_PORT": 1965,
    "SERVER_PROTOCOL": "GEMINI",
    "SERVER_SOFTWARE": "jetforce/test",
    "QUERY_STRING": "q=a%20b",
    "REMOTE_ADDR": "192.0.2.7",
    "REMOTE_HOST": "192.0.2.7",
    "TLS_CIPHER": "TLS_AES_256_GCM_SHA384",
    "TLS_VERSION": "TLSv1.3",
    "AUTH_TYPE": "CERTIFICATE",
    "REMOTE_USER": "alice",
    "TLS_CLIENT_AUTHORISED": 0,
    "client_certificate": object(),
    "SCRIPT_NAME": "/cgi-bin/test",
    "PATH_INFO": "/extra",
}


def test_environment_is_request_variables_and_safe_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JETFORCE_TEST_SERVER_SECRET", "must-not-leak")

    variables = build_cgi_environment(REQUEST_ENVIRON)

    expected = {key: str(value) for key, value in REQUEST_ENVIRON.items() if key.isupper()}
    expected.update(GATEWAY_INTERFACE="CGI/1.1", PATH=SAFE_PATH)
    assert variables == expected


def test_environment_value_with_nul_rejected() -> None:
    with pytest.raises(CGIError, match="REMOTE_USER"):
        build_cgi_environment({**REQUEST_ENVIRON, "REMOTE_USER": "mallory\x00root"})


def test_spawn_failure_raises_cgi_error() -> None:
    class FailingReactor(FakeProcessReactor):
        def spawnProcess(self, *args: Any, **kwargs: Any) -> Any:
            raise OSError(24, "Too many open files")

    with pytest.raises(CGIError, match="could not be started: .*Too many open files"):
        run_cgi_script(FailingReactor(), "/srv/cgi-bin/x", {"SCRIPT_NAME": "/cgi-bin/x"})


# Through the static application and the server, in memory.


@pytest.fixture
def capsule(tmp_path: Path) -> Path:
    root = tmp_path / "capsule"
    (root / "cgi-bin" / "sub").mkdir(parents=True)
    for name in ("script", "sub/deep", "index.gmi"):
        path = root / "cgi-bin" / name
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    (root / "cgi-bin" / "data.txt").write_text("not a script\n")
    (root / "secret.txt").write_text("secret\n")
    return root


def serve_with_fake_processes(root: Path, url: str, **client: Any) -> tuple[FakeProcessReactor, Any, Any]:
    reactor = FakeProcessReactor()
    app = StaticDirectoryApplication(root, reactor=reactor)
    server = make_memory_server(app, clock=reactor, **client.pop("server", {}))
    connection = connect_memory(server, url.encode("utf-8") + b"\r\n", **client)
    return reactor, server, connection


def test_request_environment_passed_to_script(capsule: Path) -> None:
    reactor, server, connection = serve_with_fake_processes(
        capsule,
        "gemini://localhost/cgi-bin/script/a/b?q=a%20b",
        client_options=ClientTLSOptions(self_signed(common_name="alice")),
        server={"allow_transient_certs": True},
    )

    [spawned] = reactor.spawned
    env = spawned.env
    script = str(capsule.resolve() / "cgi-bin" / "script")
    assert (spawned.executable, spawned.args, spawned.path) == spawn_command(script)
    assert set(env) == CGI_ENVIRONMENT_KEYS
    assert env["GEMINI_URL"] == "gemini://localhost/cgi-bin/script/a/b?q=a%20b"
    assert env["SCRIPT_NAME"] == "/cgi-bin/script"
    assert env["PATH_INFO"] == "/a/b"
    assert env["QUERY_STRING"] == "q=a%20b"
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["SERVER_PORT"] == "1965"
    assert env["REMOTE_USER"] == "alice"
    assert env["TLS_CLIENT_AUTHORISED"] == "0"
    assert env["GATEWAY_INTERFACE"] == "CGI/1.1"
    assert env["PATH"] == SAFE_PATH


@pytest.mark.parametrize(
    ("path", "script", "script_name", "path_info"),
    [
        ("/cgi-bin/script", "script", "/cgi-bin/script", ""),
        ("/cgi-bin/script/", "script", "/cgi-bin/script", "/"),
        ("/cgi-bin/script//a///b/", "script", "/cgi-bin/script", "//a///b/"),
        ("/cgi-bin/script/a%20b/c%C3%A9", "script", "/cgi-bin/script", "/a b/cé"),
        ("/cgi-bin/script/" + "QUJD" * 100, "script", "/cgi-bin/script", "/" + "QUJD" * 100),
        ("/cgi-bin/script/.config", "script", "/cgi-bin/script", "/.config"),
        ("/cgi-bin/script/x/../y", "script", "/cgi-bin/script", "/x/../y"),
        ("//cgi-bin/./script/x", "script", "/cgi-bin/script", "/x"),
        ("/cgi-bin/sub/../script/x", "script", "/cgi-bin/script", "/x"),
        ("/other/../cgi-bin/script", "script", "/cgi-bin/script", ""),
        ("/cgi-bin/sub/deep/more/path", "sub/deep", "/cgi-bin/sub/deep", "/more/path"),
        ("/cgi-bin/", "index.gmi", "/cgi-bin/index.gmi", ""),
    ],
)
def test_script_name_and_path_info(capsule: Path, path: str, script: str, script_name: str, path_info: str) -> None:
    reactor, _, _ = serve_with_fake_processes(capsule, "gemini://localhost" + path)

    [spawned] = reactor.spawned
    assert spawned.args[-1] == str(capsule.resolve() / "cgi-bin" / script)
    assert spawned.env["SCRIPT_NAME"] == script_name
    assert spawned.env["PATH_INFO"] == path_info


@pytest.mark.parametrize(
    "path",
    [
        "/cgi-bin/script/a%2Fb",
        "/cgi-bin/script/%00",
        "/cgi-bin/script/%ff",
        "/cgi-bin/script/../../../secret.txt",
        "/cgi-bin/script/../../../../etc/passwd",
        "/cgi-bin/.script",
        "/cgi-bin/data.txt",
        "/cgi-bin/data.txt/more",
        "/cgi-bin/missing",
    ],
)
def test_unusable_cgi_path_not_found_without_spawning(capsule: Path, path: str) -> None:
    reactor, _, connection = serve_with_fake_processes(capsule, "gemini://localhost" + path)

    assert connection.client.header == b"51 Not Found"
    assert reactor.spawned == []
    assert b"secret" not in connection.client.received


def test_script_response_over_tls(capsule: Path) -> None:
    reactor, _, connection = serve_with_fake_processes(capsule, "gemini://localhost/cgi-bin/script")
    process = reactor.spawned[0].process

    process.write(b"20 text/gemini\r\n# Hello\n")
    connection.flush()
    process.close_stdout()
    connection.flush()

    assert connection.client.header == b"20 text/gemini"
    assert connection.client.body == b"# Hello\n"
    assert connection.client.close_notify_received


def test_bad_header_answered_42_over_tls(capsule: Path) -> None:
    reactor, server, connection = serve_with_fake_processes(capsule, "gemini://localhost/cgi-bin/script")

    reactor.spawned[0].process.write(b"hello world\n")
    connection.flush()

    assert connection.client.header == b"42 CGI error"
    assert any("CGI script /cgi-bin/script failed: invalid header" in line for line in server.messages)


def test_client_disconnect_before_header_terminates_script(capsule: Path) -> None:
    reactor, _, connection = serve_with_fake_processes(capsule, "gemini://localhost/cgi-bin/script")
    process = reactor.spawned[0].process

    connection.client.transport.abortConnection()
    connection.flush()

    assert process.signals == ["TERM"]
    reactor.advance(KILL_GRACE_PERIOD)
    assert process.signals == ["TERM", "KILL"]


def test_client_disconnect_mid_body_terminates_script(capsule: Path) -> None:
    reactor, _, connection = serve_with_fake_processes(capsule, "gemini://localhost/cgi-bin/script")
    process = reactor.spawned[0].process
    process.write(b"20 text/plain\r\npart one\n")
    connection.flush()
    assert connection.client.body == b"part one\n"

    connection.client.transport.abortConnection()
    connection.flush()

    assert process.signals == ["TERM"]
    assert 1 in process.closed
    process.exit(signal=15)
    reactor.advance(KILL_GRACE_PERIOD)
    assert process.signals == ["TERM"]
    assert process.reaped


def test_slow_client_pauses_script_pipe(capsule: Path) -> None:
    reactor = FakeProcessReactor()
    app = StaticDirectoryApplication(capsule, reactor=reactor)
    server = make_memory_server(app, clock=reactor, use_tls=False)
    transport = SlowClientTransport()
    protocol = server.buildProtocol(PEER)
    protocol.makeConnection(transport)
    protocol.dataReceived(b"gemini://localhost/cgi-bin/script\r\n")
    process = reactor.spawned[0].process
    script_protocol = process.protocol

    output_size = 16 * 1024 * 1024
    written = 0
    max_held = 0
    process.write(b"20 application/octet-stream\r\n")
    for _ in range(100_000):
        if not process.paused and written < output_size:
            process.write(bytes([written // PIPE_READ_BYTES % 251]) * PIPE_READ_BYTES)
            written += PIPE_READ_BYTES
        elif written >= output_size and 1 not in process.closed:
            process.close_stdout()
        transport.read(4 * 1024)
        reactor.advance(0)
        max_held = max(max_held, script_protocol._buffered + transport.buffered)
        if transport.disconnecting and transport.buffered == 0:
            break
    else:
        pytest.fail("the CGI response did not end")

    body = bytes(transport.received).partition(b"\r\n")[2]
    assert len(body) == output_size
    assert body[:PIPE_READ_BYTES] == b"\x00" * PIPE_READ_BYTES
    assert process.pauses > 10
    assert max_held <= MAX_BUFFERED_BYTES + transport.limit + 2 * PIPE_READ_BYTES


def test_exit_before_output_is_read_logged_after_it() -> None:
    run = start_script()
    run.process.exit(0)
    run.process.reapProcess()
    assert run.log == []

    run.process.write(b"not a header\n")
    run.reactor.advance(0)

    assert run.process.signals == []
    assert any("(pid 40000) exited with status 0; responded 42: invalid header" in line for line in run.log)


def test_spawn_command_changes_to_script_directory() -> None:
    executable, arguments, working_directory = spawn_command("/srv/gemini/cgi-bin/app")

    if executable.endswith("/env"):
        assert arguments == [executable, "--chdir", "/srv/gemini/cgi-bin", "/srv/gemini/cgi-bin/app"]
        assert working_directory is None
    else:
        assert arguments == ["/srv/gemini/cgi-bin/app"]
        assert working_directory == "/srv/gemini/cgi-bin"


def test_spawn_command_without_env_for_equals_sign() -> None:
    executable, arguments, working_directory = spawn_command("/srv/gemini/cgi-bin/a=b")

    assert executable == "/srv/gemini/cgi-bin/a=b"
    assert arguments == [executable]
    assert working_directory == "/srv/gemini/cgi-bin"
