"""
Soak run: a jetforce server under a mix of well-behaved and hostile clients.

The script starts `python -m jetforce` from this checkout on 127.0.0.1 with a
capsule it makes in a temporary directory, then for --minutes runs client
threads side by side:

- normal: fetch index.gmi and check the page;
- certificate: present a freshly made self-signed certificate to a CGI
  script that echoes its fingerprint, and check the fingerprint;
- cgi: run a CGI script without a certificate;
- aborted download: read the start of a large file, then reset the socket;
- slow loris: send the request line one byte per second;
- idle: open TCP and send nothing;
- garbage: send an HTTP request or random bytes instead of a TLS handshake.

Every few seconds it samples the server's open file descriptors and RSS
from /proc. At the end it waits for the server's timeouts to clear the
hostile connections, then prints requests by status, the errors that the
well-behaved clients saw, and fd and RSS at start, peak and end.

All traffic goes to 127.0.0.1; every loop stops at the deadline, and the
server is ended by PID.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import hashlib
import os
import random
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

REPOSITORY = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
CLIENT_TIMEOUT = 30.0
LARGE_FILE_BYTES = 20 * 1024 * 1024

FINGERPRINT_SCRIPT = """#!/bin/sh
printf '20 text/plain\\r\\n'
printf '%s\\n' "${TLS_CLIENT_HASH:-none}"
"""
HELLO_SCRIPT = """#!/bin/sh
printf '20 text/plain\\r\\n'
echo "hello from CGI"
"""


class Tally:
    """Thread-safe counters of responses by client kind and status, and of client errors."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.statuses: collections.Counter[tuple[str, str]] = collections.Counter()
        self.errors: collections.Counter[tuple[str, str]] = collections.Counter()
        self.error_examples: dict[tuple[str, str], str] = {}

    def count(self, kind: str, status: str) -> None:
        with self.lock:
            self.statuses[(kind, status)] += 1

    def error(self, kind: str, reason: str, detail: str) -> None:
        with self.lock:
            self.errors[(kind, reason)] += 1
            self.error_examples.setdefault((kind, reason), detail)


def make_capsule(root: Path) -> None:
    (root / "cgi-bin").mkdir(parents=True)
    (root / "index.gmi").write_text("# Soak capsule\n\nThe index page.\n")
    with open(root / "large.bin", "wb") as handle:
        handle.write(os.urandom(1024 * 1024) * (LARGE_FILE_BYTES // (1024 * 1024)))
    for name, body in (("fingerprint", FINGERPRINT_SCRIPT), ("hello", HELLO_SCRIPT)):
        script = root / "cgi-bin" / name
        script.write_text(body)
        script.chmod(0o755)


def make_client_certificate(directory: Path, index: int) -> tuple[Path, Path, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"soak-{index}")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    certfile = directory / f"client-{index}.crt"
    keyfile = directory / f"client-{index}.key"
    certfile.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    fingerprint = "SHA256:" + hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest().upper()
    return certfile, keyfile, fingerprint


def client_context(certfile: Path | None = None, keyfile: Path | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if certfile is not None:
        context.load_cert_chain(certfile, keyfile)
    return context


def fetch(port: int, url: str, context: ssl.SSLContext) -> tuple[str, bytes]:
    with socket.create_connection((HOST, port), timeout=CLIENT_TIMEOUT) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(url.encode() + b"\r\n")
            data = bytearray()
            while chunk := tls.recv(65536):
                data += chunk
    header, _, body = bytes(data).partition(b"\r\n")
    return header.decode("utf-8", "replace"), body


# The client kinds. Each runs one exchange and records what it saw.


def run_normal(port: int, tally: Tally, work: Path, index: int) -> None:
    try:
        header, body = fetch(port, "gemini://localhost/", client_context())
    except (OSError, ssl.SSLError) as error:
        tally.error("normal", type(error).__name__, str(error))
        return
    tally.count("normal", header[:2])
    if header != "20 text/gemini" or b"The index page." not in body:
        tally.error("normal", "unexpected response", header)


def run_certificate(port: int, tally: Tally, work: Path, index: int) -> None:
    certfile, keyfile, fingerprint = make_client_certificate(work, index % 64)
    try:
        header, body = fetch(port, "gemini://localhost/cgi-bin/fingerprint", client_context(certfile, keyfile))
    except (OSError, ssl.SSLError) as error:
        tally.error("certificate", type(error).__name__, str(error))
        return
    tally.count("certificate", header[:2])
    if header != "20 text/plain" or body.strip().decode() != fingerprint:
        tally.error("certificate", "wrong fingerprint", f"{header} {body[:80]!r}")


def run_cgi(port: int, tally: Tally, work: Path, index: int) -> None:
    try:
        header, body = fetch(port, "gemini://localhost/cgi-bin/hello", client_context())
    except (OSError, ssl.SSLError) as error:
        tally.error("cgi", type(error).__name__, str(error))
        return
    tally.count("cgi", header[:2])
    if header != "20 text/plain" or body != b"hello from CGI\n":
        tally.error("cgi", "unexpected response", header)


def run_aborted_download(port: int, tally: Tally, work: Path, index: int) -> None:
    try:
        raw = socket.create_connection((HOST, port), timeout=CLIENT_TIMEOUT)
        tls = client_context().wrap_socket(raw, server_hostname="localhost")
        tls.sendall(b"gemini://localhost/large.bin\r\n")
        received = 0
        while received < 256 * 1024:
            chunk = tls.recv(65536)
            if not chunk:
                break
            received += len(chunk)
        # SO_LINGER with a zero timeout makes close() send a reset. The
        # TLS socket owns the descriptor once wrap_socket() has taken it.
        tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        tls.close()
        tally.count("aborted download", "reset after 256 KiB")
    except (OSError, ssl.SSLError) as error:
        tally.error("aborted download", type(error).__name__, str(error))


def run_slow_loris(port: int, tally: Tally, work: Path, index: int) -> None:
    try:
        with socket.create_connection((HOST, port), timeout=CLIENT_TIMEOUT) as raw:
            with client_context().wrap_socket(raw, server_hostname="localhost") as tls:
                for byte in b"gemini://localhost/" + b"x" * 60:
                    tls.sendall(bytes([byte]))
                    time.sleep(1.0)
                tally.count("slow loris", "never closed")
    except (OSError, ssl.SSLError):
        tally.count("slow loris", "closed by server")


def run_idle(port: int, tally: Tally, work: Path, index: int) -> None:
    try:
        with socket.create_connection((HOST, port), timeout=CLIENT_TIMEOUT) as raw:
            data = raw.recv(1)
            tally.count("idle", "closed by server" if not data else "data")
    except OSError:
        tally.count("idle", "closed by server")


def run_garbage(port: int, tally: Tally, work: Path, index: int) -> None:
    payload = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n" if index % 2 else os.urandom(512)
    try:
        with socket.create_connection((HOST, port), timeout=CLIENT_TIMEOUT) as raw:
            raw.sendall(payload)
            while raw.recv(4096):
                pass
        tally.count("garbage", "closed by server")
    except OSError:
        tally.count("garbage", "closed by server")


# (kind, function, threads): well-behaved kinds run in a tight loop, hostile
# ones in few threads because each keeps its connection open for seconds.
CLIENT_MIX = [
    ("normal", run_normal, 2),
    ("certificate", run_certificate, 1),
    ("cgi", run_cgi, 1),
    ("aborted download", run_aborted_download, 1),
    ("slow loris", run_slow_loris, 2),
    ("idle", run_idle, 2),
    ("garbage", run_garbage, 1),
]
WELL_BEHAVED = {"normal", "certificate", "cgi"}


def client_loop(kind, function, port: int, tally: Tally, work: Path, deadline: float, seed: int) -> None:
    index = seed
    while time.monotonic() < deadline:
        function(port, tally, work, index)
        index += 1


# Sampling the server process.


def open_file_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def resident_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def start_server(capsule: Path, work: Path) -> tuple[subprocess.Popen[bytes], int]:
    stderr_path = work / "server.err"
    env = {**os.environ, "XDG_DATA_HOME": str(work / "data")}
    with open(work / "server.out", "wb") as out, open(stderr_path, "wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "jetforce", "--port", "0", "--dir", str(capsule), "--allow-transient-certs"],
            stdout=out,
            stderr=err,
            env=env,
            cwd=REPOSITORY,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in stderr_path.read_text().splitlines():
            if "Listening on" in line:
                return process, int(line.rsplit(":", 1)[1])
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}: {stderr_path.read_text()}")
        time.sleep(0.1)
    process.kill()
    raise SystemExit("the server did not start within 30 s")


def main() -> int:
    parser = argparse.ArgumentParser(description="Soak a jetforce server on 127.0.0.1 with mixed clients.")
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the load phase (default: 10)")
    parser.add_argument("--sample-seconds", type=float, default=5.0, help="interval between samples (default: 5)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="jetforce-soak-") as temporary:
        work = Path(temporary)
        capsule = work / "capsule"
        make_capsule(capsule)
        process, port = start_server(capsule, work)
        try:
            return soak(process, port, work, args.minutes * 60, args.sample_seconds)
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def soak(process: subprocess.Popen[bytes], port: int, work: Path, seconds: float, sample_seconds: float) -> int:
    pid = process.pid
    # A warm-up request loads the code paths, so that the start sample is
    # the resting server rather than one still importing modules.
    fetch(port, "gemini://localhost/", client_context())
    fetch(port, "gemini://localhost/cgi-bin/hello", client_context())
    start_fds, start_rss = open_file_descriptors(pid), resident_kib(pid)
    samples = [(0.0, start_fds, start_rss)]

    tally = Tally()
    started = time.monotonic()
    deadline = started + seconds
    threads = []
    for kind, function, count in CLIENT_MIX:
        for number in range(count):
            thread = threading.Thread(
                target=client_loop,
                args=(kind, function, port, tally, work, deadline, number * 100_000),
                daemon=True,
            )
            thread.start()
            threads.append(thread)

    print(f"Soaking jetforce (PID {pid}) on {HOST}:{port} for {seconds / 60:g} minutes", flush=True)
    while time.monotonic() < deadline:
        time.sleep(sample_seconds)
        sample = (time.monotonic() - started, open_file_descriptors(pid), resident_kib(pid))
        samples.append(sample)
        print(f"  t={sample[0]:6.0f} s  fds={sample[1]:5d}  rss={sample[2] / 1024:7.1f} MiB", flush=True)

    for thread in threads:
        thread.join(timeout=CLIENT_TIMEOUT + 70)

    # Idle and slow connections end at the request timeout; give the server
    # that long, plus the write timeout, to close everything.
    settle_deadline = time.monotonic() + 45
    while time.monotonic() < settle_deadline and open_file_descriptors(pid) > start_fds + 5:
        time.sleep(1)
    end_fds, end_rss = open_file_descriptors(pid), resident_kib(pid)
    samples.append((time.monotonic() - started, end_fds, end_rss))

    return report(tally, samples, start_fds, start_rss, end_fds, end_rss, process)


def report(tally, samples, start_fds, start_rss, end_fds, end_rss, process) -> int:
    peak_fds = max(sample[1] for sample in samples)
    peak_rss = max(sample[2] for sample in samples)
    print("\nResponses by client kind and status:")
    for (kind, status), count in sorted(tally.statuses.items()):
        print(f"  {kind:18s} {status:22s} {count:8d}")

    well_behaved_errors = {key: count for key, count in tally.errors.items() if key[0] in WELL_BEHAVED}
    print(f"\nErrors seen by well-behaved clients: {sum(well_behaved_errors.values())}")
    for key, count in sorted(well_behaved_errors.items()):
        print(f"  {key[0]} {key[1]}: {count} (e.g. {tally.error_examples[key]})")

    print("\nServer process:")
    print(f"  file descriptors  start {start_fds:6d}  peak {peak_fds:6d}  end {end_fds:6d}")
    print(f"  RSS (MiB)         start {start_rss / 1024:6.1f}  peak {peak_rss / 1024:6.1f}  end {end_rss / 1024:6.1f}")
    print(f"  server still running: {process.poll() is None}")

    fd_ok = end_fds - start_fds <= 5
    rss_ok = (peak_rss - start_rss) < 32 * 1024
    passed = not well_behaved_errors and fd_ok and rss_ok and process.poll() is None
    print(
        f"\nSummary: {'PASS' if passed else 'FAIL'}: {sum(well_behaved_errors.values())} client errors, "
        f"fd change {end_fds - start_fds:+d} (limit 5), RSS growth {(peak_rss - start_rss) / 1024:.1f} MiB (limit 32)"
    )
    return 0 if passed else 1


if __name__ == "__main__":
    random.seed(1965)
    sys.exit(main())
