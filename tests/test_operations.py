"""The real jetforce command under signals, slow clients and a connection cap."""

from __future__ import annotations

import signal
import socket
import ssl
import threading
from pathlib import Path

import pytest

from .harness import LOOPBACK_TIMEOUT, gemini_request, jetforce_command, process_has_exited, start_process, wait_for

SLOW_SCRIPT = """#!/bin/sh
echo $$ > "{pid_file}"
sleep {seconds}
printf '20 text/plain\\r\\n'
echo finished
"""


def make_capsule(root: Path, seconds: float) -> Path:
    """Make a capsule with a CGI script that records its PID and sleeps before it responds."""
    (root / "cgi-bin").mkdir(parents=True)
    (root / "index.gmi").write_text("# Index\n")
    (root / "large.bin").write_bytes(b"\0" * (32 * 1024 * 1024))
    script = root / "cgi-bin" / "slow"
    script.write_text(SLOW_SCRIPT.format(pid_file=root / "slow.pid", seconds=seconds))
    script.chmod(0o755)
    return root


class BackgroundRequest(threading.Thread):
    def __init__(self, port: int, url: str) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.url = url
        self.response = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.response = gemini_request(self.port, self.url)
        except BaseException as error:  # recorded for the test thread to assert on
            self.error = error


@pytest.fixture
def capsule(tmp_path: Path) -> Path:
    return make_capsule(tmp_path / "capsule", seconds=1)


def test_sigterm_lets_response_in_flight_finish(tmp_path, capsule):
    server = start_process(jetforce_command("--dir", str(capsule), "--shutdown-timeout", "15"), tmp_path)
    try:
        request = BackgroundRequest(server.port, "gemini://localhost/cgi-bin/slow")
        request.start()
        wait_for((capsule / "slow.pid").exists, "the CGI script to start")

        server.process.send_signal(signal.SIGTERM)
        request.join(LOOPBACK_TIMEOUT)
        exit_status = server.process.wait(timeout=LOOPBACK_TIMEOUT)
    finally:
        server.stop()

    assert request.error is None
    assert request.response.status == 20
    assert request.response.body == b"finished\n"
    assert exit_status == 0
    assert "Shutting down: waiting up to 15 s for 1 open connections" in server.stderr()


def test_shutdown_timeout_cuts_slow_response(tmp_path):
    capsule = make_capsule(tmp_path / "capsule", seconds=60)
    server = start_process(jetforce_command("--dir", str(capsule), "--shutdown-timeout", "0.5"), tmp_path)
    try:
        request = BackgroundRequest(server.port, "gemini://localhost/cgi-bin/slow")
        request.start()
        wait_for((capsule / "slow.pid").exists, "the CGI script to start")

        server.process.send_signal(signal.SIGTERM)
        exit_status = server.process.wait(timeout=LOOPBACK_TIMEOUT)
        request.join(LOOPBACK_TIMEOUT)
    finally:
        server.stop()

    assert exit_status == 0
    assert "aborting 1 connections, 1 of them mid-response" in server.stderr()
    script_pid = int((capsule / "slow.pid").read_text())
    wait_for(lambda: process_has_exited(script_pid), "the CGI script to end")


def test_second_signal_exits_at_once(tmp_path):
    capsule = make_capsule(tmp_path / "capsule", seconds=60)
    server = start_process(jetforce_command("--dir", str(capsule), "--shutdown-timeout", "60"), tmp_path)
    try:
        request = BackgroundRequest(server.port, "gemini://localhost/cgi-bin/slow")
        request.start()
        wait_for((capsule / "slow.pid").exists, "the CGI script to start")

        server.process.send_signal(signal.SIGTERM)
        wait_for(lambda: "Shutting down" in server.stderr(), "the shutdown to start")
        server.process.send_signal(signal.SIGTERM)
        exit_status = server.process.wait(timeout=LOOPBACK_TIMEOUT)
    finally:
        server.stop()
        script_pid = int((capsule / "slow.pid").read_text())
        if not process_has_exited(script_pid):
            import os

            os.kill(script_pid, signal.SIGKILL)

    assert exit_status == 128 + signal.SIGTERM


def test_new_connections_refused_after_sigterm(tmp_path, capsule):
    server = start_process(jetforce_command("--dir", str(capsule), "--shutdown-timeout", "15"), tmp_path)
    try:
        request = BackgroundRequest(server.port, "gemini://localhost/cgi-bin/slow")
        request.start()
        wait_for((capsule / "slow.pid").exists, "the CGI script to start")
        server.process.send_signal(signal.SIGTERM)
        wait_for(lambda: "Shutting down" in server.stderr(), "the shutdown to start")

        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", server.port), timeout=LOOPBACK_TIMEOUT).close()
        request.join(LOOPBACK_TIMEOUT)
    finally:
        server.stop()
    assert request.response.status == 20


def test_client_that_stops_reading_is_aborted(tmp_path, capsule):
    server = start_process(jetforce_command("--dir", str(capsule), "--write-timeout", "1"), tmp_path)
    try:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=LOOPBACK_TIMEOUT)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"gemini://localhost/large.bin\r\n")
            tls.recv(100)
            wait_for(lambda: "read nothing of the response" in server.stderr(), "the write timeout")
    finally:
        server.stop()


def test_connection_cap_defers_accept(tmp_path, capsule):
    server = start_process(jetforce_command("--dir", str(capsule), "--max-connections", "2"), tmp_path)
    idle = []
    try:
        for _ in range(2):
            idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=LOOPBACK_TIMEOUT))
        wait_for(lambda: "Reached 2 open connections" in server.stderr(), "the connection cap")

        # The kernel completes the TCP handshake, but the server does not
        # accept, so this request waits until an idle connection closes.
        request = BackgroundRequest(server.port, "gemini://localhost/")
        request.start()
        request.join(0.5)
        assert request.is_alive()

        idle.pop().close()
        request.join(LOOPBACK_TIMEOUT)
        assert request.error is None
        assert request.response.status == 20
        assert "Accepting connections again" in server.stderr()
    finally:
        for sock in idle:
            sock.close()
        server.stop()


def test_workers_share_port_and_stop_together(tmp_path, capsule):
    import re

    server = start_process(jetforce_command("--dir", str(capsule), "--workers", "2"), tmp_path)
    try:
        wait_for(lambda: server.stderr().count("Listening on") == 2, "both workers to listen")
        responses = [gemini_request(server.port, "gemini://localhost/") for _ in range(6)]
        worker_pids = [int(pid) for pid in re.findall(r"Started worker \d \(PID (\d+)\)", server.stderr())]

        server.process.send_signal(signal.SIGTERM)
        exit_status = server.process.wait(timeout=LOOPBACK_TIMEOUT)
    finally:
        server.stop()

    assert [response.status for response in responses] == [20] * 6
    assert len(worker_pids) == 2
    assert exit_status == 0
    for pid in worker_pids:
        wait_for(lambda: process_has_exited(pid), f"worker {pid} to exit")


def test_workers_report_port_in_use_once(tmp_path, capsule):
    import subprocess
    import sys

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as occupier:
        occupier.bind(("127.0.0.1", 0))
        occupier.listen(1)
        port = occupier.getsockname()[1]
        completed = subprocess.run(
            [sys.executable, "-m", "jetforce", "--dir", str(capsule), "--workers", "2", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=LOOPBACK_TIMEOUT,
        )
    assert completed.returncode == 1
    assert completed.stderr.strip() == f"jetforce: error: cannot listen on 127.0.0.1:{port}: Address already in use"
