"""The real jetforce command on loopback: start-up, certificate modes, errors."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import ssl
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from .certs import issue, make_ca, self_signed, server_credential
from .harness import LOOPBACK_TIMEOUT, gemini_request, jetforce_command, start_process

REPOSITORY = Path(__file__).resolve().parent.parent
CAPSULE = REPOSITORY / "contrib" / "capsule"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict:
    directory = tmp_path_factory.mktemp("cli-pki")
    root = make_ca("CLI Root")
    server_certfile, server_keyfile = server_credential(root).write(directory, "server")
    cafile = directory / "ca.pem"
    cafile.write_bytes(root.certificate_pem)
    transient = self_signed("alice")
    transient_files = transient.write(directory, "alice")
    verified = issue(root, "bob")
    verified_files = verified.write(directory, "bob")
    return {
        "directory": directory,
        "server": (server_certfile, server_keyfile),
        "cafile": cafile,
        "transient": transient,
        "transient_files": transient_files,
        "verified": verified,
        "verified_files": verified_files,
    }


@pytest.fixture
def running(tmp_path: Path):
    """Start jetforce with extra arguments; every server started is stopped by PID afterwards."""
    started = []

    def start(*arguments: str, env: dict | None = None):
        server = start_process(jetforce_command(*arguments), tmp_path, env=env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def capsule_arguments(pki: dict, *extra: str) -> list[str]:
    certfile, keyfile = pki["server"]
    return ["--dir", str(CAPSULE), "--tls-certfile", str(certfile), "--tls-keyfile", str(keyfile), *extra]


def test_transient_certificate_sees_its_fingerprint(pki, running):
    server = running(*capsule_arguments(pki, "--allow-transient-certs"))
    certfile, keyfile = pki["transient_files"]
    response = gemini_request(server.port, "gemini://localhost/cgi-bin/whoami", certfile=certfile, keyfile=keyfile)

    fingerprint = hashlib.sha256(pki["transient"].der).hexdigest().upper()
    assert response.status == 20
    assert f"SHA256:{fingerprint}".encode() in response.body
    assert b"Common name: alice" in response.body
    assert b"Authorised: no" in response.body
    assert response.close_notify_received


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command is not installed")
def test_openssl_s_client_fingerprint_matches(pki, running):
    server = running(*capsule_arguments(pki, "--allow-transient-certs"))
    certfile, keyfile = pki["transient_files"]
    completed = subprocess.run(
        [
            "openssl", "s_client", "-quiet", "-connect", f"127.0.0.1:{server.port}",
            "-servername", "localhost", "-cert", str(certfile), "-key", str(keyfile),
        ],
        input=b"gemini://localhost/cgi-bin/whoami\r\n",
        capture_output=True,
        timeout=LOOPBACK_TIMEOUT,
    )
    printed = subprocess.run(
        ["openssl", "x509", "-in", str(certfile), "-noout", "-fingerprint", "-sha256"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    colon_fingerprint = printed.strip().split("=", 1)[1]

    assert completed.stdout.startswith(b"20 text/gemini\r\n")
    assert colon_fingerprint.replace(":", "").encode() in completed.stdout


def test_without_flag_certificate_not_requested(pki, running):
    server = running(*capsule_arguments(pki))
    certfile, keyfile = pki["transient_files"]
    response = gemini_request(server.port, "gemini://localhost/cgi-bin/whoami", certfile=certfile, keyfile=keyfile)

    assert response.status == 60
    assert "Client certificates: not requested" in server.stderr()


def test_ca_mode_rejects_self_signed_accepts_verified(pki, running):
    server = running(*capsule_arguments(pki, "--tls-cafile", str(pki["cafile"])))
    certfile, keyfile = pki["transient_files"]
    with pytest.raises((ssl.SSLError, ConnectionError)):
        gemini_request(server.port, "gemini://localhost/cgi-bin/whoami", certfile=certfile, keyfile=keyfile)

    certfile, keyfile = pki["verified_files"]
    response = gemini_request(server.port, "gemini://localhost/cgi-bin/whoami", certfile=certfile, keyfile=keyfile)
    assert response.status == 20
    assert b"Authorised: yes" in response.body
    assert b"Common name: bob" in response.body


def test_startup_lines_name_mode_address_and_root(pki, running):
    server = running(*capsule_arguments(pki, "--allow-transient-certs", "--hostname", "localhost"))
    log = server.stderr()

    assert f"Listening on 127.0.0.1:{server.port}" in log
    assert "serving gemini://localhost/" in log
    assert "Client certificates: transient certificates accepted (CA: none)" in log
    assert str(CAPSULE) in log
    assert str(pki["server"][0]) in log


def test_access_log_written_to_stdout_at_once(pki, running):
    server = running(*capsule_arguments(pki))
    gemini_request(server.port, "gemini://localhost/hello.txt")

    lines = server.stdout().splitlines()
    assert len(lines) == 1
    assert '"gemini://localhost/hello.txt" 20 "text/plain"' in lines[0]


def test_self_signed_certificate_kept_across_restarts(tmp_path, running):
    data_home = tmp_path / "data"
    env = {"XDG_DATA_HOME": str(data_home)}

    def served_fingerprint() -> str:
        server = running("--dir", str(CAPSULE), env=env)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", server.port), timeout=LOOPBACK_TIMEOUT) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                der = tls.getpeercert(binary_form=True)
        server.stop()
        return hashlib.sha256(der).hexdigest()

    first = served_fingerprint()
    second = served_fingerprint()
    assert first == second

    directory = data_home / "jetforce" / "certs"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "localhost.key").stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("arguments", "message_part"),
    [
        (["--tls-certfile", "/nonexistent/server.crt", "--tls-keyfile", "/nonexistent/server.key"], "does not exist"),
        (["--dir", "/nonexistent/capsule"], "root directory"),
        (["--rate-limit", "ten per minute"], "--rate-limit"),
        (["--rate-limit", "10/5y"], "--rate-limit"),
        (["--port", "70000"], "--port"),
        (["--port", "http"], "invalid int value"),
        (["--request-timeout", "-1"], "greater than 0"),
        (["--tls-keyfile", "/tmp/x.key"], "needs --tls-certfile"),
    ],
)
def test_bad_option_one_line_and_nonzero_exit(arguments, message_part):
    completed = subprocess.run(
        [sys.executable, "-m", "jetforce", *arguments],
        capture_output=True,
        text=True,
        timeout=LOOPBACK_TIMEOUT,
    )
    assert completed.returncode != 0
    assert "Traceback" not in completed.stderr
    assert len(completed.stderr.strip().splitlines()) == 1
    assert message_part in completed.stderr


def run_and_expect_failure(arguments: list[str], tmp_path: Path) -> str:
    completed = subprocess.run(
        [sys.executable, "-m", "jetforce", *arguments],
        capture_output=True,
        text=True,
        timeout=LOOPBACK_TIMEOUT,
        env={**os.environ, "XDG_DATA_HOME": str(tmp_path / "data")},
    )
    assert completed.returncode != 0
    assert "Traceback" not in completed.stderr
    error_lines = [line for line in completed.stderr.splitlines() if line.startswith("jetforce: error:")]
    assert len(error_lines) == 1
    return error_lines[0]


def test_key_not_matching_certificate(tmp_path, pki):
    certfile, _ = pki["server"]
    _, other_keyfile = pki["transient_files"]
    line = run_and_expect_failure(
        ["--dir", str(CAPSULE), "--tls-certfile", str(certfile), "--tls-keyfile", str(other_keyfile), "--port", "0"],
        tmp_path,
    )
    assert "does not match" in line


def test_unreadable_certificate_content(tmp_path, pki):
    garbage = tmp_path / "garbage.crt"
    garbage.write_text("not a certificate\n")
    line = run_and_expect_failure(["--dir", str(CAPSULE), "--tls-certfile", str(garbage), "--port", "0"], tmp_path)
    assert "cannot load the certificate chain" in line


def test_port_already_in_use(tmp_path, pki):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as occupier:
        occupier.bind(("127.0.0.1", 0))
        occupier.listen(1)
        port = occupier.getsockname()[1]
        line = run_and_expect_failure(["--dir", str(CAPSULE), "--port", str(port)], tmp_path)
    assert f"cannot listen on 127.0.0.1:{port}" in line


def test_version_option():
    completed = subprocess.run(
        [sys.executable, "-m", "jetforce", "--version"], capture_output=True, text=True, timeout=LOOPBACK_TIMEOUT
    )
    assert completed.returncode == 0
    assert completed.stdout.startswith("jetforce ")


def test_no_tls_serves_plain_tcp(running):
    server = running("--dir", str(CAPSULE), "--no-tls")
    with socket.create_connection(("127.0.0.1", server.port), timeout=LOOPBACK_TIMEOUT) as sock:
        sock.sendall(b"gemini://localhost/hello.txt\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"20 text/plain\r\nHello from the jetforce demo capsule.")


def test_proxy_protocol_header_sets_remote_addr(pki, running):
    server = running(*capsule_arguments(pki, "--proxy-protocol"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", server.port), timeout=LOOPBACK_TIMEOUT) as raw:
        raw.sendall(b"PROXY TCP4 127.0.0.9 127.0.0.1 40000 1965\r\n")
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"gemini://localhost/cgi-bin/environment\r\n")
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    assert b"REMOTE_ADDR=127.0.0.9\n" in data


def test_proxy_protocol_without_header_closed(pki, running):
    server = running(*capsule_arguments(pki, "--proxy-protocol"))
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        gemini_request(server.port, "gemini://localhost/")


def ipv6_loopback_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback_available(), reason="IPv6 loopback is not available")
def test_empty_host_serves_ipv4_and_ipv6(pki, running):
    server = running(*capsule_arguments(pki, "--host", ""))
    over_ipv4 = gemini_request(server.port, "gemini://localhost/hello.txt", host="127.0.0.1")
    over_ipv6 = gemini_request(server.port, "gemini://localhost/hello.txt", host="::1")

    assert over_ipv4.status == 20
    assert over_ipv6.status == 20
    assert "Traceback" not in server.stderr()


@pytest.mark.parametrize(
    ("arguments", "message_part"),
    [
        (["--tls-cafile", "/nonexistent/ca.pem"], "--tls-cafile /nonexistent/ca.pem does not exist"),
        (["--tls-capath", "/nonexistent/cas"], "--tls-capath /nonexistent/cas does not exist"),
    ],
)
def test_missing_ca_option_one_line(arguments, message_part):
    completed = subprocess.run(
        [sys.executable, "-m", "jetforce", "--dir", str(CAPSULE), *arguments],
        capture_output=True,
        text=True,
        timeout=LOOPBACK_TIMEOUT,
    )
    lines = completed.stderr.strip().splitlines()
    assert completed.returncode == 2
    assert len(lines) == 1
    assert lines[0].startswith(f"jetforce: error: {message_part}")


def test_failed_start_prints_only_its_error(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as occupier:
        occupier.bind(("127.0.0.1", 0))
        occupier.listen(1)
        port = occupier.getsockname()[1]
        completed = subprocess.run(
            [sys.executable, "-m", "jetforce", "--dir", str(CAPSULE), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=LOOPBACK_TIMEOUT,
            env={**os.environ, "XDG_DATA_HOME": str(tmp_path / "data")},
        )
    assert completed.returncode == 1
    assert completed.stderr.strip().splitlines() == [
        f"jetforce: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]
