"""
Real CGI scripts on loopback, served by a reactor that runs in a thread
without signal handlers, as embedding applications and test suites run it.
No SIGCHLD ever arrives there, so responses must end when stdout closes and
the server must reap its children itself. The last test runs the jetforce
command instead.

Every script writes its PID to a file, so each test can check by PID that
the process it caused is gone afterwards.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from jetforce.app.cgi import SAFE_PATH

from .certs import self_signed
from .harness import (
    CGI_ENVIRONMENT_KEYS,
    LOOPBACK_TIMEOUT,
    RunningServer,
    gemini_request,
    jetforce_command,
    process_exists,
    start_process,
    wait_for,
)

# A server as an embedding application runs one: the reactor in a thread,
# started with installSignalHandlers=False.
THREADED_SERVER = """
import signal, sys, threading
from twisted.internet import reactor
from jetforce import GeminiServer, StaticDirectoryApplication

app = StaticDirectoryApplication(sys.argv[1], cgi_timeout=float(sys.argv[2]))
server = GeminiServer(app, reactor=reactor, host="127.0.0.1", port=0, allow_transient_certs=True)
server.initialize()
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda number, frame: stop.set())
thread = threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False}, daemon=True)
thread.start()
while not stop.wait(0.5):
    pass
reactor.callFromThread(reactor.stop)
thread.join(15)
"""

# Seconds a script may take to write its header on the shared server. The
# timeout test starts a server of its own with the shorter limit.
SCRIPT_TIMEOUT = 20.0
SHORT_SCRIPT_TIMEOUT = 2.0

SOURCE_MARKER = "SOURCE-OF-A-SCRIPT-3f9d"

# Each script records its PID first. {pid} and {release} are files in the
# capsule. A script that waits polls {release} at most 400 times (20 s).
SCRIPTS = {
    "environ": """#!/bin/sh
echo $$ > "{pid}"
printf '20 application/octet-stream\\r\\n'
cat /proc/$$/environ
""",
    "nothing": """#!/bin/sh
echo $$ > "{pid}"
exit 3
""",
    "badheader": """#!/bin/sh
echo $$ > "{pid}"
printf 'Content-Type: text/html\\r\\n\\r\\n<p>hello</p>\\n'
""",
    "hugeheader": """#!/bin/sh
echo $$ > "{pid}"
head -c 100000 /dev/zero | tr '\\0' '2'
""",
    "sleeper": """#!/bin/sh
echo $$ > "{pid}"
exec sleep 60
""",
    "stream": """#!/bin/sh
echo $$ > "{pid}"
printf '20 application/octet-stream\\r\\n'
exec cat /dev/zero
""",
    "slow": """#!/bin/sh
echo $$ > "{pid}"
printf '20 text/plain\\r\\n'
i=0
while [ ! -e "{release}" ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i + 1)); done
echo released
""",
    "closes-early": """#!/bin/sh
echo $$ > "{pid}"
printf '20 text/plain\\r\\nbody\\n'
exec >&-
i=0
while [ ! -e "{release}" ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i + 1)); done
exit 0
""",
    "stderr": """#!/bin/sh
echo $$ > "{pid}"
echo "first stderr line" >&2
printf '20 text/plain\\r\\nok\\n'
echo "second stderr line" >&2
""",
}


def make_capsule(root: Path) -> Path:
    (root / "cgi-bin").mkdir(parents=True)
    (root / "run").mkdir()
    (root / "static.txt").write_text("static content\n")
    for name, text in SCRIPTS.items():
        script = root / "cgi-bin" / name
        script.write_text(text.format(pid=root / "run" / f"{name}.pid", release=root / "run" / f"{name}.release"))
        script.chmod(0o755)
    (root / "cgi-bin" / "lost-bit").write_text(f"#!/bin/sh\n# {SOURCE_MARKER}\necho hello\n")
    return root


def start_threaded_server(root: Path, work_dir: Path, cgi_timeout: float) -> RunningServer:
    return start_process([sys.executable, "-c", THREADED_SERVER, str(root), str(cgi_timeout)], work_dir)


@pytest.fixture(scope="module")
def capsule(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_capsule(tmp_path_factory.mktemp("cgi-scripts") / "capsule")


@pytest.fixture(scope="module")
def server(capsule: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_threaded_server(capsule, tmp_path_factory.mktemp("cgi-server"), SCRIPT_TIMEOUT)
    yield running
    running.stop()


@pytest.fixture
def script_pids(capsule: Path) -> Iterator[Callable[[str], int]]:
    """Return a function that waits for a script's PID file; scripts still running afterwards are killed by PID."""
    seen: list[int] = []

    def pid_of(name: str) -> int:
        path = capsule / "run" / f"{name}.pid"
        wait_for(lambda: path.exists() and path.read_text().strip() != "", f"{path.name} to be written")
        pid = int(path.read_text())
        seen.append(pid)
        return pid

    yield pid_of
    for pid in seen:
        if process_exists(pid):
            os.kill(pid, signal.SIGKILL)
    for path in (capsule / "run").iterdir():
        path.unlink()


def wait_for_log(server: RunningServer, pattern: str) -> None:
    """Wait until a line of the server's stderr matches the regular expression pattern."""
    expression = re.compile(pattern)
    try:
        wait_for(lambda: expression.search(server.stderr()) is not None, f"{pattern!r} in the server log")
    except AssertionError as error:
        raise AssertionError(f"{error}; the log ends with:\n{server.stderr()[-3000:]}") from None


def open_request(port: int, url: str) -> ssl.SSLSocket:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", port), timeout=LOOPBACK_TIMEOUT)
    connection = context.wrap_socket(raw, server_hostname="localhost")
    connection.sendall(url.encode("utf-8") + b"\r\n")
    return connection


def read_response(connection: ssl.SSLSocket, limit: int = 16 * 1024 * 1024) -> bytes:
    data = bytearray()
    while len(data) < limit:
        try:
            chunk = connection.recv(65536)
        except ssl.SSLEOFError:
            break
        if not chunk:
            break
        data += chunk
    return bytes(data)


def read_environment(body: bytes) -> dict[str, str]:
    pairs = [entry.split(b"=", 1) for entry in body.split(b"\0") if entry]
    return {name.decode(): value.decode() for name, value in pairs}


def test_environment_is_exactly_the_request(server: RunningServer, script_pids: Callable[[str], int], tmp_path: Path) -> None:
    certfile, keyfile = self_signed("carol").write(tmp_path, "carol")

    response = gemini_request(server.port, "gemini://localhost/cgi-bin/environ/a%20b/?x=1%202", certfile=certfile, keyfile=keyfile)

    assert response.header == "20 application/octet-stream"
    environ = read_environment(response.body)
    assert set(environ) == CGI_ENVIRONMENT_KEYS
    assert environ["GEMINI_URL"] == "gemini://localhost/cgi-bin/environ/a%20b/?x=1%202"
    assert environ["SCRIPT_NAME"] == "/cgi-bin/environ"
    assert environ["PATH_INFO"] == "/a b/"
    assert environ["QUERY_STRING"] == "x=1%202"
    assert environ["SERVER_PORT"] == str(server.port)
    assert environ["REMOTE_ADDR"] == "127.0.0.1"
    assert environ["GATEWAY_INTERFACE"] == "CGI/1.1"
    assert environ["PATH"] == SAFE_PATH
    assert environ["REMOTE_USER"] == "carol"
    assert environ["TLS_CLIENT_AUTHORISED"] == "0"
    wait_for(lambda: not process_exists(script_pids("environ")), "the script to be reaped")


@pytest.mark.parametrize(
    ("path", "path_info"),
    [
        ("/cgi-bin/environ", ""),
        ("/cgi-bin/environ/", "/"),
        ("/cgi-bin/environ//x///y//", "//x///y//"),
        ("/cgi-bin/environ/line%0Abreak", "/line\nbreak"),
        ("/cgi-bin/environ/" + "QUJDRA" * 60, "/" + "QUJDRA" * 60),
    ],
)
def test_path_info_reaches_script(server: RunningServer, script_pids: Callable[[str], int], path: str, path_info: str) -> None:
    response = gemini_request(server.port, "gemini://localhost" + path)

    environ = read_environment(response.body)
    assert environ["SCRIPT_NAME"] == "/cgi-bin/environ"
    assert environ["PATH_INFO"] == path_info
    script_pids("environ")


def test_slow_script_does_not_block_other_requests(server: RunningServer, capsule: Path, script_pids: Callable[[str], int]) -> None:
    slow = open_request(server.port, "gemini://localhost/cgi-bin/slow")
    try:
        pid = script_pids("slow")

        static = gemini_request(server.port, "gemini://localhost/static.txt")
        other_script = gemini_request(server.port, "gemini://localhost/cgi-bin/stderr")

        assert static.body == b"static content\n"
        assert other_script.body == b"ok\n"
        assert process_exists(pid)
        (capsule / "run" / "slow.release").touch()
        assert read_response(slow) == b"20 text/plain\r\nreleased\n"
    finally:
        slow.close()
    wait_for(lambda: not process_exists(pid), "the slow script to be reaped")


def test_response_ends_when_stdout_closes(server: RunningServer, capsule: Path, script_pids: Callable[[str], int]) -> None:
    response = gemini_request(server.port, "gemini://localhost/cgi-bin/closes-early")
    pid = script_pids("closes-early")

    assert response.header == "20 text/plain"
    assert response.body == b"body\n"
    assert response.close_notify_received
    assert process_exists(pid)

    (capsule / "run" / "closes-early.release").touch()
    wait_for(lambda: not process_exists(pid), "the script to be reaped without SIGCHLD")


def test_script_writing_nothing_answered_42(server: RunningServer, script_pids: Callable[[str], int]) -> None:
    response = gemini_request(server.port, "gemini://localhost/cgi-bin/nothing")
    pid = script_pids("nothing")

    assert response.header == "42 CGI error"
    wait_for_log(server, rf"\(pid {pid}\) exited with status 3; responded 42: no output on stdout")
    assert not process_exists(pid)


def test_bad_header_answered_42(server: RunningServer, script_pids: Callable[[str], int]) -> None:
    response = gemini_request(server.port, "gemini://localhost/cgi-bin/badheader")
    pid = script_pids("badheader")

    assert response.header == "42 CGI error"
    assert b"hello" not in response.body
    # The script may exit before or after the SIGTERM sent when its header fails.
    wait_for_log(server, rf"\(pid {pid}\) (exited with status 0|was ended by signal 15); responded 42: invalid header")


def test_huge_header_answered_42(server: RunningServer, script_pids: Callable[[str], int]) -> None:
    response = gemini_request(server.port, "gemini://localhost/cgi-bin/hugeheader")
    pid = script_pids("hugeheader")

    assert response.header == "42 CGI error"
    assert response.body == b""
    assert "failed: header line longer than 1029 bytes" in server.stderr()
    wait_for(lambda: not process_exists(pid), "the script to end")


def test_script_stderr_logged_with_name(server: RunningServer, script_pids: Callable[[str], int]) -> None:
    response = gemini_request(server.port, "gemini://localhost/cgi-bin/stderr")
    pid = script_pids("stderr")

    assert response.body == b"ok\n"
    for line in ("first stderr line", "second stderr line"):
        wait_for_log(server, re.escape(f"127.0.0.1 CGI script /cgi-bin/stderr (pid {pid}) stderr: {line}"))


def test_client_disconnect_before_header_ends_script(server: RunningServer, script_pids: Callable[[str], int]) -> None:
    connection = open_request(server.port, "gemini://localhost/cgi-bin/sleeper")
    pid = script_pids("sleeper")
    assert process_exists(pid)

    connection.close()

    wait_for(lambda: not process_exists(pid), "the sleeping script to end")
    assert f"ending CGI script /cgi-bin/sleeper (pid {pid}): connection closed before the response ended" in server.stderr()


def test_client_disconnect_mid_body_ends_script(server: RunningServer, script_pids: Callable[[str], int]) -> None:
    connection = open_request(server.port, "gemini://localhost/cgi-bin/stream")
    try:
        received = 0
        for _ in range(1000):
            received += len(connection.recv(65536))
            if received >= 256 * 1024:
                break
        pid = script_pids("stream")
        assert process_exists(pid)
    finally:
        connection.close()

    wait_for(lambda: not process_exists(pid), "the streaming script to end")


def test_non_executable_file_in_cgi_directory_not_served(server: RunningServer) -> None:
    response = gemini_request(server.port, "gemini://localhost/cgi-bin/lost-bit")

    assert response.header == "51 Not Found"
    assert SOURCE_MARKER.encode() not in response.body
    wait_for_log(server, "lost-bit: it is in the CGI directory but is not an executable file")


def test_script_past_time_limit_answered_42_and_ended(tmp_path: Path) -> None:
    root = make_capsule(tmp_path / "capsule")
    running = start_threaded_server(root, tmp_path, SHORT_SCRIPT_TIMEOUT)
    pid_file = root / "run" / "sleeper.pid"
    try:
        started = time.monotonic()
        response = gemini_request(running.port, "gemini://localhost/cgi-bin/sleeper")
        elapsed = time.monotonic() - started

        assert response.header == "42 CGI error"
        assert elapsed >= SHORT_SCRIPT_TIMEOUT
        # The script writes its PID at once, long before the time limit.
        wait_for(lambda: pid_file.exists() and pid_file.read_text().strip() != "", "the PID file")
        pid = int(pid_file.read_text())
        wait_for(lambda: not process_exists(pid), "the script to end")
        wait_for_log(running, rf"\(pid {pid}\) was ended by signal 15; responded 42: no header within {SHORT_SCRIPT_TIMEOUT:g} s")
    finally:
        running.stop()
        if pid_file.exists() and process_exists(int(pid_file.read_text())):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_cli_logs_script_stderr_and_warnings(tmp_path: Path) -> None:
    root = make_capsule(tmp_path / "capsule")
    running = start_process(jetforce_command("--dir", str(root)), tmp_path)
    try:
        gemini_request(running.port, "gemini://localhost/cgi-bin/stderr")
        gemini_request(running.port, "gemini://localhost/cgi-bin/lost-bit")
        pid = int((root / "run" / "stderr.pid").read_text())
        wait_for(lambda: not process_exists(pid), "the script to end")
    finally:
        running.stop()

    assert "stderr: first stderr line" in running.stderr()
    assert "not an executable file" in running.stderr()


def test_script_runs_in_its_own_directory(tmp_path: Path) -> None:
    root = tmp_path / "capsule"
    (root / "cgi-bin").mkdir(parents=True)
    script = root / "cgi-bin" / "where"
    script.write_text("#!/bin/sh\nprintf '20 text/plain\\r\\n'\npwd\n")
    script.chmod(0o755)
    running = start_process(jetforce_command("--dir", str(root)), tmp_path)
    try:
        response = gemini_request(running.port, "gemini://localhost/cgi-bin/where")
    finally:
        running.stop()

    assert response.status == 20
    assert response.body.decode().strip() == str((root / "cgi-bin").resolve())
