"""
CGI scripts run as child processes, with their output relayed as it arrives.

run_cgi_script() spawns the script with spawnProcess and returns a
DeferredResponse at once, so the reactor does not wait on a script (only the
one-time check of env --chdir at the first request blocks it briefly). The first
line of the script's stdout is the Gemini header, checked like any other;
the rest is the body, handed to the server chunk by chunk through
Deferreds. When more than MAX_BUFFERED_BYTES wait for a slow client,
reading the pipe pauses, so the script blocks on its own writes instead of
filling the server's memory.

The response ends when the script closes its stdout; the exit status is
only logged. A reactor started without signal handlers (in a thread, as
test suites and embedding applications run it) never learns of SIGCHLD,
so once stdout is closed the process is reaped by polling waitpid() until
it has exited.

A script that writes no header within its timeout or an invalid one, or
whose client goes away, is abandoned: its output is discarded, the read end
of its stdout is closed so that its next write fails, and it is sent
SIGTERM, then SIGKILL if it is still running KILL_GRACE_PERIOD seconds
later.
"""

from __future__ import annotations

import enum
import functools
import os
import re
import shutil
import subprocess
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

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

if TYPE_CHECKING:
    from twisted.internet.process import Process

# Seconds a script has to write its header line.
DEFAULT_CGI_TIMEOUT = 30.0

# Seconds between SIGTERM and SIGKILL.
KILL_GRACE_PERIOD = 5.0

# Output that may wait for a slow client before the pipe stops being read.
# Reading resumes once the client has taken half of it.
MAX_BUFFERED_BYTES = 256 * 1024

# A line of stderr longer than this is logged in pieces.
MAX_STDERR_LINE_BYTES = 4096

# Lines of stderr logged per run. Later lines are only counted, so that a
# script stuck in a loop cannot flood the log.
MAX_STDERR_LINES_LOGGED = 200

# Seconds between waitpid() polls for a script that has closed its stdout or
# been signalled but has not been reaped. The interval doubles from the
# first value up to the second.
FIRST_REAP_INTERVAL = 0.05
MAX_REAP_INTERVAL = 5.0

# The only variable of the server's own environment that scripts inherit.
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"

# C0 controls and DEL in stderr text are escaped so that a line of a
# script's stderr stays one line of the server's log.
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

log = Logger(namespace="jetforce.cgi")


class ScriptState(enum.Enum):
    WAITING_FOR_HEADER = "waiting for the header"
    RELAYING_BODY = "relaying the body"
    # stdout closed after a valid header. Buffered chunks may remain.
    FINISHED = "finished"
    # The header failed or the response was cancelled, so output is discarded.
    ABANDONED = "abandoned"


_ALLOWED_TRANSITIONS: dict[ScriptState, frozenset[ScriptState]] = {
    ScriptState.WAITING_FOR_HEADER: frozenset({ScriptState.RELAYING_BODY, ScriptState.ABANDONED}),
    ScriptState.RELAYING_BODY: frozenset({ScriptState.FINISHED, ScriptState.ABANDONED}),
    ScriptState.FINISHED: frozenset(),
    ScriptState.ABANDONED: frozenset(),
}


class CGIProcessProtocol(ProcessProtocol):
    """One running script: its header Deferred, its buffered output and its lifetime."""

    def __init__(
        self,
        script_name: str,
        clock: Any,
        timeout: float,
        log: Logger = log,
        peer: str = "-",
    ) -> None:
        self.script_name = script_name
        self.clock = clock
        self.log = log
        self.peer = peer
        self.header: Deferred[tuple[int, str]] = Deferred(self._cancel)
        self.state = ScriptState.WAITING_FOR_HEADER
        self.pid: int | None = None

        self._timeout = timeout
        self._abandon_reason: str | None = None
        self._response_failed = False
        self._header_buffer = bytearray()
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._reading_paused = False
        self._stdout_closed = False
        self._end_delivered = False
        self._waiting: Deferred[bytes | None] | None = None
        self._stderr_buffer = bytearray()
        self._stderr_lines_logged = 0
        self._stderr_lines_dropped = 0
        self._timeout_call: IDelayedCall | None = None
        self._kill_call: IDelayedCall | None = None
        self._reap_call: IDelayedCall | None = None
        self._reap_interval = FIRST_REAP_INTERVAL
        self._signalled = False
        self._exited = False
        self._exit_error: BaseException | None = None
        self._exit_logged = False

    def _set_state(self, new_state: ScriptState) -> None:
        if new_state not in _ALLOWED_TRANSITIONS[self.state]:
            raise RuntimeError(f"CGI script {self.script_name} cannot go from {self.state} to {new_state}")
        self.state = new_state

    @property
    def _process(self) -> Process | None:
        """
        The process transport, or None before makeConnection.

        spawnProcess on POSIX connects this protocol to Twisted's Process,
        which adds pauseProducing, resumeProducing and reapProcess to what
        IProcessTransport declares.
        """
        return cast("Process | None", self.transport)

    # Process events.

    def connectionMade(self) -> None:
        process = self._process
        if process is None:
            return
        self.pid = process.pid
        # Gemini requests have no body, so the script's stdin is closed.
        process.closeStdin()
        self._timeout_call = self.clock.callLater(self._timeout, self._header_timed_out)

    def outReceived(self, data: bytes) -> None:
        if self.state is ScriptState.RELAYING_BODY:
            self._append_body(data)
        elif self.state is ScriptState.WAITING_FOR_HEADER:
            self._receive_header(data)
        # Output of an abandoned script is dropped until its pipe closes.

    def errReceived(self, data: bytes) -> None:
        self._stderr_buffer += data
        while True:
            end = self._stderr_buffer.find(b"\n")
            if end != -1:
                self._log_stderr(bytes(self._stderr_buffer[:end]))
                del self._stderr_buffer[: end + 1]
            elif len(self._stderr_buffer) > MAX_STDERR_LINE_BYTES:
                self._log_stderr(bytes(self._stderr_buffer[:MAX_STDERR_LINE_BYTES]))
                del self._stderr_buffer[:MAX_STDERR_LINE_BYTES]
            else:
                return

    def outConnectionLost(self) -> None:
        self._stdout_closed = True
        if self.state is ScriptState.WAITING_FOR_HEADER:
            reason = "output ended inside the header line" if self._header_buffer else "no output on stdout"
            self._abandon(reason, failed=True)
        elif self.state is ScriptState.RELAYING_BODY:
            self._set_state(ScriptState.FINISHED)
            self._deliver_waiting()
        self._start_reaping()
        self._log_exit_once_known()

    def errConnectionLost(self) -> None:
        if self._stderr_buffer:
            self._log_stderr(bytes(self._stderr_buffer))
            self._stderr_buffer.clear()
        if self._stderr_lines_dropped:
            self.log.warn(
                "{peer} CGI script {script} (pid {pid}): {count} more lines of stderr were not logged",
                peer=self.peer,
                script=self.script_name,
                pid=self.pid,
                count=self._stderr_lines_dropped,
            )

    def processExited(self, reason: Failure) -> None:
        self._exited = True
        self._exit_error = reason.value
        _cancel_call(self._kill_call)
        self._kill_call = None
        _cancel_call(self._reap_call)
        self._reap_call = None
        self._log_exit_once_known()

    def processEnded(self, reason: Failure) -> None:
        self._exited = True
        _cancel_call(self._timeout_call)
        self._timeout_call = None
        _cancel_call(self._kill_call)
        self._kill_call = None
        _cancel_call(self._reap_call)
        self._reap_call = None

    # The header.

    def _receive_header(self, data: bytes) -> None:
        self._header_buffer += data
        end = self._header_buffer.find(b"\n")
        if end == -1:
            if len(self._header_buffer) > MAX_HEADER_LINE_BYTES:
                self._abandon(f"header line longer than {MAX_HEADER_LINE_BYTES} bytes", failed=True)
            return

        line = bytes(self._header_buffer[:end]).removesuffix(b"\r")
        rest = bytes(self._header_buffer[end + 1 :])
        self._header_buffer.clear()
        try:
            status, meta = parse_response_header(line)
        except InvalidResponseHeader as error:
            self._abandon(f"invalid header: {error.meta}", failed=True)
            return

        _cancel_call(self._timeout_call)
        self._timeout_call = None
        self._set_state(ScriptState.RELAYING_BODY)
        if rest:
            self._append_body(rest)
        self.header.callback((status, meta))

    def _header_timed_out(self) -> None:
        self._timeout_call = None
        self._abandon(f"no header within {self._timeout:g} s", failed=True)

    # The body, as the response streamer pulls it.

    def next_chunk(self) -> Deferred[bytes | None]:
        """Return a Deferred firing with the next piece of output, or None at its end."""
        if self._chunks:
            return succeed(self._take_chunk())
        if self.state is not ScriptState.RELAYING_BODY:
            self._end_delivered = True
            return succeed(None)
        self._waiting = Deferred(self._cancel)
        return self._waiting

    def body(self) -> Iterator[Deferred[bytes | None]]:
        """Yield Deferreds of the output chunks; closing it early abandons the script."""
        try:
            while not self._end_delivered:
                yield self.next_chunk()
        finally:
            if not self._end_delivered:
                self._abandon("response closed before the output ended", failed=False)

    def _append_body(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > MAX_BUFFERED_BYTES and not self._reading_paused:
            self._reading_paused = True
            self._pause_reading()
        self._deliver_waiting()

    def _take_chunk(self) -> bytes:
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._reading_paused and self._buffered <= MAX_BUFFERED_BYTES // 2:
            self._reading_paused = False
            self._resume_reading()
        return chunk

    def _pause_reading(self) -> None:
        process = self._process
        if process is not None:
            process.pauseProducing()

    def _resume_reading(self) -> None:
        process = self._process
        if process is not None:
            process.resumeProducing()

    def _deliver_waiting(self) -> None:
        waiting = self._waiting
        if waiting is None:
            return
        if self._chunks:
            self._waiting = None
            waiting.callback(self._take_chunk())
        elif self.state is ScriptState.FINISHED:
            self._waiting = None
            self._end_delivered = True
            waiting.callback(None)

    # Abandoning, ending and reaping the process.

    def _cancel(self, deferred: Deferred[Any]) -> None:
        # The server cancels what it waits on when the connection closes.
        if deferred is self._waiting:
            self._waiting = None
        self._abandon("connection closed before the response ended", failed=False)

    def _abandon(self, reason: str, *, failed: bool) -> None:
        """
        Discard the script's output and end the script.

        With failed set and no header yet, the header Deferred fails with a
        CGIError, which the server sends as 42.
        """
        if self.state in (ScriptState.FINISHED, ScriptState.ABANDONED):
            return
        waiting_for_header = self.state is ScriptState.WAITING_FOR_HEADER
        self._set_state(ScriptState.ABANDONED)
        self._abandon_reason = reason
        self._response_failed = failed
        _cancel_call(self._timeout_call)
        self._timeout_call = None
        self._header_buffer.clear()
        self._chunks.clear()
        self._buffered = 0

        if not self._stdout_closed:
            process = self._process
            if process is not None:
                process.closeStdout()
            if self._reading_paused:
                # Pausing also stopped stderr, whose last lines are still logged.
                self._reading_paused = False
                self._resume_reading()
        else:
            # Most scripts close stdout by exiting, and one that has exited
            # needs no signal. A script still running when the reactor shuts
            # down also has its pipe closed, and that one needs the signal.
            self._try_reap()
        self._terminate(reason)

        if failed and waiting_for_header and not self.header.called:
            self.header.errback(CGIError(f"CGI script {self.script_name} failed: {reason}"))

    def _terminate(self, reason: str) -> None:
        if self._exited or self._signalled:
            return
        self._signalled = True
        self.log.info(
            "{peer} ending CGI script {script} (pid {pid}): {reason}; sent SIGTERM",
            peer=self.peer,
            script=self.script_name,
            pid=self.pid,
            reason=reason,
        )
        self._signal("TERM")
        self._kill_call = self.clock.callLater(KILL_GRACE_PERIOD, self._kill)
        self._start_reaping()

    def _kill(self) -> None:
        self._kill_call = None
        if self._exited:
            return
        self.log.warn(
            "{peer} CGI script {script} (pid {pid}) still running {grace:g} s after SIGTERM: sent SIGKILL",
            peer=self.peer,
            script=self.script_name,
            pid=self.pid,
            grace=KILL_GRACE_PERIOD,
        )
        self._signal("KILL")

    def _signal(self, name: str) -> None:
        process = self._process
        if process is None:
            return
        try:
            process.signalProcess(name)
        except internet_error.ProcessExitedAlready:
            pass
        except OSError as error:
            self.log.warn(
                "{peer} sending SIG{signal} to CGI script {script} (pid {pid}) failed: {error}",
                peer=self.peer,
                signal=name,
                script=self.script_name,
                pid=self.pid,
                error=error,
            )

    def _start_reaping(self) -> None:
        if self._exited or self._reap_call is not None:
            return
        self._reap_call = self.clock.callLater(self._reap_interval, self._reap)

    def _reap(self) -> None:
        self._reap_call = None
        self._try_reap()
        if not self._exited:
            self._reap_interval = min(self._reap_interval * 2, MAX_REAP_INTERVAL)
            self._reap_call = self.clock.callLater(self._reap_interval, self._reap)

    def _try_reap(self) -> None:
        # Twisted's Process.reapProcess() calls waitpid(WNOHANG) and, once
        # the process has exited, processExited() here.
        process = self._process
        if process is not None and not self._exited:
            process.reapProcess()

    # Logging.

    def _log_exit_once_known(self) -> None:
        # A script is often reaped before its last output is read (at once
        # after a fork, or on SIGCHLD), and only that output shows whether
        # the response failed. The exit is logged once both have happened.
        if self._exit_error is None or not self._stdout_closed or self._exit_logged:
            return
        self._exit_logged = True
        self._log_exit(self._exit_error)

    def _log_exit(self, error: BaseException) -> None:
        exit_code: int | None = 0
        signal_number: int | None = None
        if isinstance(error, internet_error.ProcessTerminated):
            exit_code, signal_number = error.exitCode, error.signal

        if signal_number is not None:
            outcome = f"was ended by signal {signal_number}"
        else:
            outcome = f"exited with status {exit_code}"
        fields = {"peer": self.peer, "script": self.script_name, "pid": self.pid, "outcome": outcome}

        if self._abandon_reason is not None:
            fields["reason"] = self._abandon_reason
            if self._response_failed:
                self.log.warn("{peer} CGI script {script} (pid {pid}) {outcome}; responded 42: {reason}", **fields)
            else:
                self.log.info("{peer} CGI script {script} (pid {pid}) {outcome} after it was abandoned: {reason}", **fields)
        elif exit_code != 0 or signal_number is not None:
            self.log.warn("{peer} CGI script {script} (pid {pid}) {outcome}", **fields)
        # A clean exit after a complete response is in the access log already.

    def _log_stderr(self, line: bytes) -> None:
        if self._stderr_lines_logged >= MAX_STDERR_LINES_LOGGED:
            self._stderr_lines_dropped += 1
            return
        self._stderr_lines_logged += 1
        text = line.removesuffix(b"\r").decode("utf-8", "backslashreplace")
        text = _CONTROL_CHARACTERS.sub(lambda match: f"\\x{ord(match.group()):02x}", text)
        self.log.info(
            "{peer} CGI script {script} (pid {pid}) stderr: {line}",
            peer=self.peer,
            script=self.script_name,
            pid=self.pid,
            line=text,
        )


def _cancel_call(call: IDelayedCall | None) -> None:
    """Cancel a delayed call unless it has run or was already cancelled."""
    if call is not None and call.active():
        call.cancel()


def build_cgi_environment(environ: dict[str, Any]) -> dict[str, str]:
    """
    Return the script's environment: the request's variables and a safe PATH, nothing else.

    Raises CGIError when a value contains a NUL character, which no
    environment variable can hold (a client certificate's common name, say).
    """
    variables = cgi_environment(environ)
    variables["GATEWAY_INTERFACE"] = "CGI/1.1"
    variables["PATH"] = SAFE_PATH
    for name, value in variables.items():
        if "\x00" in value:
            raise CGIError(f"cannot pass {name} to a CGI script: its value contains a NUL character")
    return variables


def spawn_command(path: str) -> tuple[str, list[str], str | None]:
    """
    Return (executable, arguments, working directory) that run the script at path in its own directory.

    RFC 3875 recommends the script's directory as its working directory.
    Twisted starts a child with posix_spawn() only when it keeps the
    server's working directory, and otherwise forks the whole server
    process, which costs the server about three times the CPU per request.
    So the change of directory is left to `env --chdir` where env has it.
    """
    directory = os.path.dirname(path) or "."
    env = _env_with_chdir()
    # env reads any argument containing "=" before the command as a
    # variable assignment, so such a path cannot be passed through it.
    if env is None or "=" in path:
        return path, [path], directory
    return env, [env, "--chdir", directory, path], None


@functools.cache
def _env_with_chdir() -> str | None:
    """Return the path of an env command that accepts --chdir, as GNU coreutils' does, or None."""
    candidate = shutil.which("env", path=SAFE_PATH)
    if candidate is None:
        return None

    # Runs once per process, blocking the reactor for a few milliseconds.
    try:
        completed = subprocess.run(
            [candidate, "--chdir", "/", "true"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=5,
            env={"PATH": SAFE_PATH},
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return candidate if completed.returncode == 0 else None


def run_cgi_script(
    reactor: Any,
    path: str,
    environ: dict[str, Any],
    timeout: float = DEFAULT_CGI_TIMEOUT,
    logger: Logger = log,
) -> DeferredResponse:
    """
    Spawn the script at path and return its response, whose header arrives later.

    Raises CGIError when the script cannot be started.
    """
    script_name = str(environ.get("SCRIPT_NAME") or path)
    variables = build_cgi_environment(environ)
    process = CGIProcessProtocol(script_name, reactor, timeout, logger, peer=str(environ.get("REMOTE_ADDR", "-")))
    executable, arguments, working_directory = spawn_command(path)
    try:
        reactor.spawnProcess(process, executable, args=arguments, env=variables, path=working_directory)
    except (OSError, ValueError) as error:
        raise CGIError(f"CGI script {script_name} could not be started: {error}") from error
    return DeferredResponse(process.header, process.body())
