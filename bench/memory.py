#!/usr/bin/env python3
"""Measure the server's peak RSS while slow clients download a large body.

Two scenarios, each against a fresh `python -m jetforce` from this checkout
on 127.0.0.1 (its main-thread reactor, as operators run it):
  1. --clients clients (8) download one --size-mib file (200 MiB);
  2. one client downloads the same number of bytes written by a CGI script.
Every client reads at --rate bytes per second (64 KiB/s) for --duration
seconds. A server that buffered the body for a slow client would grow by
about the body size at once. One that streams with back-pressure stays
flat. The figures are read from /proc: VmRSS sampled every 0.1 s and VmHWM
(the kernel's peak RSS, reset before each scenario through clear_refs when
the kernel allows it). For the CGI scenario, the script's write count in
/proc/PID/io shows how far ahead of the client the script got.

Prints a table and exits 1 when the RSS growth of a scenario reaches
--limit-mib (64). Linux only; all traffic stays on 127.0.0.1 and every
wait is bounded in time.

    .venv/bin/python bench/memory.py
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
MIB = 1024 * 1024
KIB = 1024

SERVER_START_TIMEOUT = 30.0
SERVER_STOP_TIMEOUT = 10.0
SOCKET_TIMEOUT = 30.0
SAMPLE_INTERVAL = 0.1
# A client reads at least this much at a time, so that it does not spin.
MIN_READ_BYTES = 4 * KIB
MAX_READ_BYTES = 64 * KIB
# Bound on how long a client may wait for one read before it gives up.
CLIENT_JOIN_MARGIN = 30.0

_LISTENING = re.compile(r"Listening on \[?[0-9a-fA-F.:]+\]?:(\d+)")


class BenchmarkError(Exception):
    """A setup step or a client failed. The message names the step and the cause."""


@dataclass
class ClientResult:
    received: int = 0
    header: bytes = b""
    error: str | None = None


@dataclass
class ScenarioResult:
    name: str
    clients: int
    received: list[int]
    rss_before: int
    rss_peak: int
    script_written: int | None = None

    @property
    def growth(self) -> int:
        return max(self.rss_peak - self.rss_before, 0)


# Content and server.


def write_content(root: Path, size: int) -> None:
    (root / "cgi-bin").mkdir(parents=True)
    (root / "index.gmi").write_text("# Memory benchmark\n")

    block = bytes(range(256)) * (MIB // 256)
    with open(root / "big.bin", "wb") as handle:
        for _ in range(size // MIB):
            handle.write(block)
        handle.write(block[: size % MIB])

    scripts = {
        "stream": f"#!/bin/sh\nprintf '20 application/octet-stream\\r\\n'\nexec head -c {size} /dev/zero\n",
        "hello": "#!/bin/sh\nprintf '20 text/plain\\r\\nhello\\n'\n",
    }
    for name, text in scripts.items():
        path = root / "cgi-bin" / name
        path.write_text(text)
        path.chmod(0o755)


def start_server(python: str, root: Path, work_dir: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    stderr_path = work_dir / "server.err"
    env = {**os.environ, "XDG_DATA_HOME": str(work_dir / "xdg-data"), "PYTHONPATH": str(REPO_DIR)}
    command = [python, "-m", "jetforce", "--host", HOST, "--port", "0", "--dir", str(root)]
    with open(work_dir / "server.out", "wb") as out, open(stderr_path, "wb") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, env=env, cwd=work_dir)

    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        match = _LISTENING.search(stderr_path.read_text(errors="replace"))
        if match:
            return process, int(match.group(1)), stderr_path
        if process.poll() is not None:
            raise BenchmarkError(f"the server exited with status {process.returncode}: {stderr_path.read_text()}")
        time.sleep(0.05)
    stop_server(process)
    raise BenchmarkError(f"the server did not listen within {SERVER_START_TIMEOUT:g} s; see {stderr_path}")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=SERVER_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=SERVER_STOP_TIMEOUT)


# /proc readings.


def read_status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * KIB
    raise BenchmarkError(f"/proc/{pid}/status has no {field} line")


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux 4.0 and later); return False where that is not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def child_pids(pid: int) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return children


def bytes_written(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


# Clients.


def client_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def fetch(port: int, path: str) -> bytes:
    """Download a small response at full speed."""
    with socket.create_connection((HOST, port), timeout=SOCKET_TIMEOUT) as raw:
        with client_context().wrap_socket(raw, server_hostname="localhost") as connection:
            connection.sendall(f"gemini://localhost{path}\r\n".encode())
            data = bytearray()
            while len(data) < MIB:
                try:
                    chunk = connection.recv(65536)
                except ssl.SSLEOFError:
                    break
                if not chunk:
                    break
                data += chunk
            return bytes(data)


def read_slowly(port: int, path: str, rate: int, duration: float, result: ClientResult) -> None:
    """Read a response at rate bytes per second for duration seconds, or to its end."""
    try:
        raw = socket.create_connection((HOST, port), timeout=SOCKET_TIMEOUT)
        # A small receive buffer keeps the kernel from absorbing the body
        # on the client's behalf, so back-pressure reaches the server soon.
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KIB)
        with client_context().wrap_socket(raw, server_hostname="localhost") as connection:
            connection.sendall(f"gemini://localhost{path}\r\n".encode())
            started = time.monotonic()
            while True:
                elapsed = time.monotonic() - started
                if elapsed >= duration:
                    return
                allowance = int(rate * elapsed) - result.received
                if allowance < MIN_READ_BYTES:
                    time.sleep(min((MIN_READ_BYTES - allowance) / rate, duration - elapsed))
                    continue
                chunk = connection.recv(min(allowance, MAX_READ_BYTES))
                if not chunk:
                    return
                if not result.header:
                    result.header = chunk.split(b"\r\n", 1)[0]
                result.received += len(chunk)
    except (OSError, ssl.SSLError) as error:
        result.error = str(error)


def run_scenario(name: str, pid: int, port: int, path: str, clients: int, rate: int, duration: float) -> ScenarioResult:
    peak_reset = reset_peak_rss(pid)
    rss_before = read_status_kib(pid, "VmRSS")
    results = [ClientResult() for _ in range(clients)]
    threads = [
        threading.Thread(target=read_slowly, args=(port, path, rate, duration, result), daemon=True)
        for result in results
    ]
    for thread in threads:
        thread.start()

    sampled_peak = rss_before
    script_written: int | None = None
    deadline = time.monotonic() + duration + CLIENT_JOIN_MARGIN
    while any(thread.is_alive() for thread in threads) and time.monotonic() < deadline:
        sampled_peak = max(sampled_peak, read_status_kib(pid, "VmRSS"))
        for child in child_pids(pid):
            written = bytes_written(child)
            if written is not None:
                script_written = max(script_written or 0, written)
        time.sleep(SAMPLE_INTERVAL)
    for thread in threads:
        thread.join(timeout=1)

    failures = [result.error for result in results if result.error]
    if failures:
        raise BenchmarkError(f"{name}: {len(failures)} clients failed, first: {failures[0]}")
    headers = {result.header for result in results}
    if headers != {b"20 application/octet-stream"}:
        raise BenchmarkError(f"{name}: unexpected response headers {headers}")

    peak = max(sampled_peak, read_status_kib(pid, "VmHWM")) if peak_reset else sampled_peak
    return ScenarioResult(name, clients, [result.received for result in results], rss_before, peak, script_written)


# Report.


def format_mib(value: int) -> str:
    return f"{value / MIB:.1f} MiB"


def print_report(settings: argparse.Namespace, results: list[ScenarioResult], pid_note: str) -> bool:
    size = settings.size_mib * MIB
    print(f"jetforce memory benchmark: peak server RSS while slow clients download a {settings.size_mib} MiB body")
    print(f"server: python -m jetforce from {REPO_DIR}, one per scenario ({pid_note})")
    print(f"host: {platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"each client reads at {settings.rate / KIB:g} KiB/s for {settings.duration:g} s")
    print()

    columns = ("scenario", "clients", "received", "RSS before", "RSS peak", "growth", "growth/body")
    rows = []
    for result in results:
        rows.append(
            (
                result.name,
                str(result.clients),
                format_mib(sum(result.received)),
                format_mib(result.rss_before),
                format_mib(result.rss_peak),
                format_mib(result.growth),
                f"{100 * result.growth / size:.1f}%",
            )
        )
    widths = [max(len(row[index]) for row in (columns, *rows)) for index in range(len(columns))]
    for row in (columns, *rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    print()

    for result in results:
        if result.script_written is not None:
            print(
                f"{result.name}: the script wrote {format_mib(result.script_written)} of {format_mib(size)} "
                f"while its client received {format_mib(sum(result.received))}"
            )

    limit = settings.limit_mib * MIB
    met = all(result.growth < limit for result in results)
    verdict = "met" if met else "NOT met"
    print(f"limit: RSS growth below {settings.limit_mib} MiB in every scenario: {verdict}")
    return met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=200, help="size of the file and of the CGI output, in MiB (default: 200)")
    parser.add_argument("--clients", type=int, default=8, help="slow clients downloading the file (default: 8)")
    parser.add_argument("--rate", type=int, default=64 * KIB, help="bytes per second each client reads (default: 65536)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds each scenario runs (default: 30)")
    parser.add_argument("--limit-mib", type=int, default=64, help="RSS growth that fails the run, in MiB (default: 64)")
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs the server (default: this one)")
    parser.add_argument("--work-dir", type=Path, help="directory for the content and logs (default: a new temporary one)")
    settings = parser.parse_args()

    if not Path("/proc/self/status").exists():
        print("error: this benchmark reads /proc and runs on Linux only", file=sys.stderr)
        return 2

    work_dir = settings.work_dir or Path(tempfile.mkdtemp(prefix="jetforce-memory-"))
    scenarios = [
        (f"static file, {settings.clients} slow clients", "/big.bin", settings.clients),
        ("CGI output, 1 slow client", "/cgi-bin/stream", 1),
    ]
    try:
        root = work_dir / "root"
        write_content(root, settings.size_mib * MIB)
        results = []
        notes = set()
        for name, path, clients in scenarios:
            # A fresh server per scenario: memory freed by the first one stays
            # in the allocator's heap and would hide the growth of the second.
            process, port, _ = start_server(settings.python, root, work_dir)
            try:
                # Warm up: the first TLS handshake, file and CGI request load
                # code and caches that are not per-download memory.
                fetch(port, "/index.gmi")
                fetch(port, "/cgi-bin/hello")
                notes.add("VmHWM reset per scenario" if reset_peak_rss(process.pid) else "VmRSS sampled every 0.1 s")
                results.append(run_scenario(name, process.pid, port, path, clients, settings.rate, settings.duration))
            finally:
                stop_server(process)
        met = print_report(settings, results, ", ".join(sorted(notes)))
        return 0 if met else 1
    except BenchmarkError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        if settings.work_dir is None:
            shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
