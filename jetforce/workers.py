"""
Several server processes sharing one set of listening sockets (--workers).

Python runs one thread of Python code at a time, so one process uses one
core however busy it is. With --workers N the parent process opens the
listening sockets, forks N workers that each run their own reactor on
them, and the kernel hands every new connection to one worker.

Forking happens before Twisted's reactor is imported anywhere, because a
reactor (its epoll descriptor, above all) must not be shared across
processes. The parent serves no requests: it restarts a worker that dies,
forwards SIGTERM and SIGINT to the workers so that each shuts down
gracefully, and exits once they all have. A second signal is forwarded too,
which makes the workers exit at once.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import sys
import time
from collections.abc import Callable

from .logs import format_address

# A worker that dies sooner than this after its start counts as failing at
# start-up. After MAX_QUICK_DEATHS of those in a row, the parent gives up.
QUICK_DEATH_SECONDS = 2.0
MAX_QUICK_DEATHS = 3


def open_listening_sockets(host: str, port: int, backlog: int) -> list[socket.socket]:
    """
    Bind and listen on host and port, as GeminiServer would.

    An empty host means every address: "::" first and then "0.0.0.0",
    which is skipped when the IPv6 socket already takes IPv4. Raises
    OSError with the address in its message when binding fails.
    """
    interfaces = ["::", "0.0.0.0"] if host == "" else [host]
    sockets: list[socket.socket] = []
    for interface in interfaces:
        family = socket.AF_INET6 if ":" in interface else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((interface, port))
        except OSError as error:
            listener.close()
            if host == "" and sockets and error.errno == errno.EADDRINUSE:
                continue
            for opened in sockets:
                opened.close()
            raise OSError(error.errno, f"cannot listen on {format_address(interface, port)}: {error.strerror}") from None
        listener.listen(backlog)
        listener.setblocking(False)
        # With port 0 the second interface must use the port the first got.
        port = listener.getsockname()[1]
        sockets.append(listener)
    return sockets


class WorkerSupervisor:
    """The parent process: forks workers, restarts dead ones and forwards signals."""

    def __init__(self, count: int, serve: Callable[[int], int]) -> None:
        self.count = count
        self.serve = serve
        self.workers: dict[int, tuple[int, float]] = {}
        self.signals_received = 0
        self.quick_deaths = 0

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._forward_signal)
        signal.signal(signal.SIGINT, self._forward_signal)
        for number in range(1, self.count + 1):
            self._start_worker(number)

        status = 0
        while self.workers:
            try:
                pid, wait_status = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            if pid not in self.workers:
                continue

            number, started = self.workers.pop(pid)
            exit_code = os.waitstatus_to_exitcode(wait_status)
            if self.signals_received:
                continue
            _log(f"Worker {number} (PID {pid}) exited with status {exit_code}")

            if time.monotonic() - started < QUICK_DEATH_SECONDS:
                self.quick_deaths += 1
            else:
                self.quick_deaths = 0
            if self.quick_deaths >= MAX_QUICK_DEATHS:
                _log(f"Workers keep failing at start-up; stopping the other {len(self.workers)}")
                self._signal_workers(signal.SIGTERM)
                status = 1
                self.signals_received = 1
                continue
            self._start_worker(number)
        return status

    def _start_worker(self, number: int) -> None:
        pid = os.fork()
        if pid == 0:
            # The worker installs its own handlers when its reactor starts.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 1
            try:
                code = self.serve(number)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        self.workers[pid] = (number, time.monotonic())
        _log(f"Started worker {number} (PID {pid})")

    def _forward_signal(self, signal_number: int, frame: object) -> None:
        self.signals_received += 1
        self._signal_workers(signal.SIGTERM)

    def _signal_workers(self, signal_number: int) -> None:
        for pid in list(self.workers):
            try:
                os.kill(pid, signal_number)
            except ProcessLookupError:
                pass


def _log(message: str) -> None:
    sys.stderr.write(f"[info] {message}\n")
    sys.stderr.flush()
