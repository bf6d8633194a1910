"""
CGI scripts run as child processes, with their output relayed as it arrives.

run_cgi_script() spawns the script with spawnProcess and returns a
DeferredResponse at once, so the reactor never waits on a script. The first
line of the script's stdout is the Gemini header; the rest is the body,
handed out chunk by chunk through Deferreds. When more than
MAX_BUFFERED_BYTES wait for a slow client, reading the pipe pauses, so the
script blocks on its own writes instead of filling the server's memory.

The response ends when the script closes its stdout. Exit statuses are only
logged: a reactor started without signal handlers (in a thread, as test
suites do) never learns that a child exited, and nothing here waits for it.

A script is sent SIGTERM, then SIGKILL after KILL_GRACE_PERIOD seconds, when
its client goes away or when it writes no header within the timeout.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from typing import Any

from twisted.internet import error as internet_error
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..environ import cgi_environment
from ..errors import CGIError, InvalidResponseHeader
from ..wire import MAX_HEADER_LINE_BYTES, parse_response_header
from .base import DeferredResponse

# Seconds a script has to write its header line.
DEFAULT_CGI_TIMEOUT = 30.0

# Seconds between SIGTERM and SIGKILL.
KILL_GRACE_PERIOD = 5.0

# Output that may wait for a slow client before the pipe stops being read.
MAX_BUFFERED_BYTES = 256 * 1024

# A line of stderr longer than this is logged in pieces.
MAX_STDERR_LINE_BYTES = 4096

# The only variable of the server's own environment that scripts inherit.
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"

log = Logger(namespace="jetforce.cgi")


class CGIProcessProtocol(ProcessProtocol):
    """One running script: its header Deferred, its buffered output and its lifetime."""

    def __init__(self, script_name: str, clock: Any, timeout: float, log: Logger = log) -> None:
        self.script_name = script_name
        self.clock = clock
        self.log = log
        self.header: Deferred[tuple[int, str]] = Deferred(self._cancel)
        self.finished = False

        self._timeout = timeout
        self._header_buffer = bytearray()
        self._header_done = False
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._reading_paused = False
        self._stdout_closed = False
        self._waiting: Deferred[bytes | None] | None = None
        self._stderr_buffer = bytearray()
        self._timeout_call: IDelayedCall | None = None
        self._kill_call: IDelayedCall | None = None
        self._exited = False

    # Process events.

    def connectionMade(self) -> None:
        # Gemini requests have no body, so the script's stdin is closed.
        self.transport.closeStdin()
        self._timeout_call = self.clock.callLater(self._timeout, self._header_timed_out)

    def outReceived(self, data: bytes) -> None:
        if self._header_done:
            self._append_body(data)
            return

        self._header_buffer += data
        end = self._header_buffer.find(b"\n")
        if end == -1:
            if len(self._header_buffer) > MAX_HEADER_LINE_BYTES:
                self._fail_header(f"header line is longer than {MAX_HEADER_LINE_BYTES} bytes")
            return

        line = bytes(self._header_buffer[:end]).removesuffix(b"\r")
        rest = bytes(self._header_buffer[end + 1 :])
        self._header_buffer.clear()
        try:
            status, meta = parse_response_header(line)
        except InvalidResponseHeader as error:
            self._fail_header(f"invalid header: {error.meta}")
            return

        self._header_done = True
        self._cancel_timeout()
        if not self.header.called:
            self.header.callback((status, meta))
        if rest:
            self._append_body(rest)

    def errReceived(self, data: bytes) -> None:
        self._stderr_buffer += data
        while True:
            end = self._stderr_buffer.find(b"\n")
            if end == -1:
                if len(self._stderr_buffer) > MAX_STDERR_LINE_BYTES:
                    self._log_stderr(bytes(self._stderr_buffer[:MAX_STDERR_LINE_BYTES]))
                    del self._stderr_buffer[:MAX_STDERR_LINE_BYTES]
                    continue
                return
            self._log_stderr(bytes(self._stderr_buffer[:end]))
            del self._stderr_buffer[: end + 1]

    def outConnectionLost(self) -> None:
        self._stdout_closed = True
        if not self._header_done:
            if self._header_buffer:
                self._fail_header("output ended before the end of the header line")
            else:
                self._fail_header("wrote nothing to stdout")
            return
        self._deliver_waiting()

    def errConnectionLost(self) -> None:
        if self._stderr_buffer:
            self._log_stderr(bytes(self._stderr_buffer))
            self._stderr_buffer.clear()

    def processEnded(self, reason: Failure) -> None:
        self._exited = True
        self._cancel_timeout()
        if self._kill_call is not None and self._kill_call.active():
            self._kill_call.cancel()

        value = reason.value
        if isinstance(value, internet_error.ProcessTerminated):
            if value.signal is not None:
                self.log.warn("CGI script {script} was ended by signal {signal}", script=self.script_name, signal=value.signal)
            else:
                self.log.warn("CGI script {script} exited with status {code}", script=self.script_name, code=value.exitCode)

    # The body, as the response streamer pulls it.

    def next_chunk(self) -> Deferred[bytes | None]:
        """Return a Deferred firing with the next piece of output, or None at its end."""
        if self._chunks:
            chunk = self._chunks.popleft()
            self._buffered -= len(chunk)
            if self._reading_paused and self._buffered <= MAX_BUFFERED_BYTES // 2:
                self._reading_paused = False
                self.transport.resumeProducing()
            return succeed(chunk)
        if self._stdout_closed:
            self.finished = True
            return succeed(None)
        self._waiting = Deferred(self._cancel)
        return self._waiting

    def body(self) -> Iterator[Deferred[bytes | None]]:
        try:
            while not self.finished:
                yield self.next_chunk()
        finally:
            if not self.finished:
                self.terminate("the response was abandoned")

    def _append_body(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > MAX_BUFFERED_BYTES and not self._reading_paused:
            self._reading_paused = True
            self.transport.pauseProducing()
        self._deliver_waiting()

    def _deliver_waiting(self) -> None:
        waiting, self._waiting = self._waiting, None
        if waiting is None:
            return
        if self._chunks:
            chunk = self._chunks.popleft()
            self._buffered -= len(chunk)
            waiting.callback(chunk)
        elif self._stdout_closed:
            self.finished = True
            waiting.callback(None)
        else:
            self._waiting = waiting

    # Failures and ending the process.

    def _fail_header(self, reason: str) -> None:
        self._header_done = True
        self._cancel_timeout()
        self.log.error("CGI script {script} failed: {reason}; answering 42", script=self.script_name, reason=reason)
        self.terminate(reason)
        if not self.header.called:
            self.header.errback(CGIError(f"CGI script {self.script_name} {reason}"))

    def _header_timed_out(self) -> None:
        self._timeout_call = None
        self._fail_header(f"wrote no header within {self._timeout:g} s")

    def _cancel(self, deferred: Deferred[Any]) -> None:
        if deferred is self._waiting:
            self._waiting = None
        self.terminate("the client went away")

    def terminate(self, reason: str) -> None:
        """Send SIGTERM now and SIGKILL after the grace period, unless the script has exited."""
        if self._exited or self._kill_call is not None:
            return
        self.log.info("Ending CGI script {script}: {reason}", script=self.script_name, reason=reason)
        self._signal("TERM")
        self._kill_call = self.clock.callLater(KILL_GRACE_PERIOD, self._signal, "KILL")

    def _signal(self, name: str) -> None:
        if self._exited:
            return
        try:
            self.transport.signalProcess(name)
        except (internet_error.ProcessExitedAlready, OSError):
            pass

    def _cancel_timeout(self) -> None:
        if self._timeout_call is not None and self._timeout_call.active():
            self._timeout_call.cancel()
        self._timeout_call = None

    def _log_stderr(self, line: bytes) -> None:
        text = line.rstrip(b"\r").decode("utf-8", "backslashreplace")
        self.log.info("CGI script {script} stderr: {line}", script=self.script_name, line=text)


def build_cgi_environment(environ: dict[str, Any]) -> dict[str, str]:
    """Return the script's environment: the request's variables and a safe PATH, nothing else."""
    variables = cgi_environment(environ)
    variables["GATEWAY_INTERFACE"] = "CGI/1.1"
    variables["PATH"] = SAFE_PATH
    return variables


def run_cgi_script(
    reactor: Any,
    path: str,
    environ: dict[str, Any],
    timeout: float = DEFAULT_CGI_TIMEOUT,
    logger: Logger = log,
) -> DeferredResponse:
    """Spawn the script at path and return its response, whose header arrives later."""
    script_name = str(environ.get("SCRIPT_NAME", path))
    process = CGIProcessProtocol(script_name, reactor, timeout, logger)
    reactor.spawnProcess(
        process,
        path,
        args=[path],
        env=build_cgi_environment(environ),
        path=os.path.dirname(path) or None,
    )
    return DeferredResponse(process.header, process.body())
