"""
Test harnesses: in-memory TLS connections and real servers on loopback.

In memory: a GeminiServer is driven through twisted.test.iosim, with real
OpenSSL handshakes on both ends (TLSMemoryBIOFactory) and a Clock for the
timeouts, so no socket, thread or sleep is involved.

On loopback: the real `jetforce` command (or any script) is started on port
0, its "Listening on" line gives the port, and gemini_request() talks to it
with the ssl module. Every process is ended by PID when the test is done.
"""

from __future__ import annotations

import os
import re
import select
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, ISSLTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, IOPump, connect
from zope.interface import implementer

from jetforce import GeminiServer

from .certs import Credential

PEER_ADDRESS = IPv4Address("TCP", "127.0.0.1", 50123)
SERVER_ADDRESS = IPv4Address("TCP", "127.0.0.1", 1965)

# Bound on any wait for a real server, so a broken server fails a test
# instead of hanging the suite.
LOOPBACK_TIMEOUT = 20.0


# In memory.


@implementer(IOpenSSLClientConnectionCreator)
class ClientTLSOptions:
    """A test client's TLS settings: no server verification, an optional client certificate."""

    def __init__(
        self,
        credential: Credential | None = None,
        version: int | None = None,
        server_name: bytes | None = b"localhost",
    ) -> None:
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.set_verify(SSL.VERIFY_NONE)
        if version is not None:
            context.set_min_proto_version(version)
            context.set_max_proto_version(version)
        if credential is not None:
            context.use_certificate(credential.certificate)
            for intermediate in credential.chain:
                context.add_extra_chain_cert(intermediate)
            context.use_privatekey(credential.key)
        self.context = context
        self.server_name = server_name

    def clientConnectionForTLS(self, protocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        if self.server_name is not None:
            connection.set_tlsext_host_name(self.server_name)
        return connection


class RecordingClient(Protocol):
    """Client protocol that sends one request line and records what comes back."""

    def __init__(self, request: bytes | None) -> None:
        self.request = request
        self.received = bytearray()
        self.lost_reason: Failure | None = None
        self.close_notify_received = False
        self.handshake_done = False

    def connectionMade(self) -> None:
        if self.request is not None:
            self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost_reason = reason
        if ISSLTransport.providedBy(self.transport):
            handle = self.transport.getHandle()
            self.close_notify_received = bool(handle.get_shutdown() & SSL.RECEIVED_SHUTDOWN)

    @property
    def closed(self) -> bool:
        return self.lost_reason is not None

    @property
    def header(self) -> bytes:
        return bytes(self.received).split(b"\r\n", 1)[0]

    @property
    def body(self) -> bytes:
        parts = bytes(self.received).split(b"\r\n", 1)
        return parts[1] if len(parts) == 2 else b""


@dataclass
class MemoryConnection:
    client: RecordingClient
    server_transport: Any
    pump: IOPump
    clock: Clock
    # The GeminiProtocol inside the server's TLS transport, or the server
    # protocol itself without TLS. Twisted drops the wrapper's reference to it
    # once the connection is lost, so it is kept here.
    gemini_protocol: Any = None

    def flush(self) -> None:
        self.pump.flush()

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.pump.flush()


def make_memory_server(app: Any, clock: Clock | None = None, **options: Any) -> GeminiServer:
    """Build a GeminiServer on a Clock whose log lines and access lines are collected in lists."""
    clock = clock or Clock()
    server = RecordingServer(app, reactor=clock, **options)
    return server


class RecordingServer(GeminiServer):
    """GeminiServer that keeps its log and access lines for assertions."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.messages: list[str] = []
        self.access_lines: list[str] = []
        super().__init__(*args, **kwargs)

    def log_access(self, message: str) -> None:
        self.access_lines.append(message)

    def log_message(self, message: str) -> None:
        self.messages.append(message)


def connect_memory(
    server: GeminiServer,
    request: bytes | None,
    client_options: ClientTLSOptions | None = None,
    flush: bool = True,
) -> MemoryConnection:
    """Connect a recording client to server in memory and pump until both sides are idle."""
    clock: Clock = server.reactor
    server_factory = server.build_transport_factory()
    client_protocol = RecordingClient(request)

    server_protocol = server_factory.buildProtocol(PEER_ADDRESS)
    server_io = FakeTransport(server_protocol, isServer=True, hostAddress=SERVER_ADDRESS, peerAddress=PEER_ADDRESS)

    if server.use_tls:
        client_factory = TLSMemoryBIOFactory(
            client_options or ClientTLSOptions(), True, Factory.forProtocol(lambda: client_protocol), clock=clock
        )
        client_side = client_factory.buildProtocol(SERVER_ADDRESS)
    else:
        client_side = client_protocol
    client_io = FakeTransport(client_side, isServer=False, hostAddress=PEER_ADDRESS, peerAddress=SERVER_ADDRESS)

    pump = connect(server_protocol, server_io, client_side, client_io, greet=False, clock=clock)
    gemini_protocol = server_protocol.wrappedProtocol if server.use_tls else server_protocol
    connection = MemoryConnection(client_protocol, server_protocol, pump, clock, gemini_protocol)
    if flush:
        pump.flush()
    return connection


# On loopback.


@dataclass
class RunningServer:
    process: subprocess.Popen[bytes]
    port: int
    host: str
    stderr_path: Path
    stdout_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


_LISTENING = re.compile(r"Listening on \[?([0-9a-fA-F.:]+)\]?:(\d+)")


def start_process(
    command: list[str],
    work_dir: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> RunningServer:
    """Start a server command, wait for its "Listening on" line and return it running."""
    stdout_path = work_dir / f"server-{time.monotonic_ns()}.out"
    stderr_path = stdout_path.with_suffix(".err")
    full_env = {**os.environ, **(env or {})}
    # The self-signed fallback certificate goes below the test's own directory.
    full_env.setdefault("XDG_DATA_HOME", str(work_dir / "xdg-data"))
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, env=full_env, cwd=cwd)

    deadline = time.monotonic() + LOOPBACK_TIMEOUT
    while time.monotonic() < deadline:
        match = _LISTENING.search(stderr_path.read_text(errors="replace"))
        if match:
            return RunningServer(process, int(match.group(2)), match.group(1), stderr_path, stdout_path)
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}: {stderr_path.read_text()}")
        # Polling the log file: the server writes the line once it listens.
        time.sleep(0.05)
    process.kill()
    process.wait()
    raise AssertionError(f"server did not start within {LOOPBACK_TIMEOUT} s: {stderr_path.read_text()}")


def jetforce_command(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "jetforce", "--port", "0", *arguments]


@dataclass
class GeminiResponse:
    header: str
    body: bytes
    close_notify_received: bool

    @property
    def status(self) -> int:
        return int(self.header[:2])

    @property
    def meta(self) -> str:
        return self.header[3:]


def gemini_request(
    port: int,
    url: str | bytes,
    host: str = "127.0.0.1",
    certfile: Path | None = None,
    keyfile: Path | None = None,
    server_name: str | None = "localhost",
    timeout: float = LOOPBACK_TIMEOUT,
) -> GeminiResponse:
    """Send one request with the ssl module and read the response until the server closes."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if certfile is not None:
        context.load_cert_chain(certfile, keyfile)
    request = url if isinstance(url, bytes) else url.encode("utf-8") + b"\r\n"

    with socket.create_connection((host, port), timeout=timeout) as raw:
        with context.wrap_socket(raw, server_hostname=server_name, suppress_ragged_eofs=False) as tls:
            tls.sendall(request)
            data = bytearray()
            close_notify = False
            while True:
                try:
                    chunk = tls.recv(65536)
                except ssl.SSLEOFError:
                    break
                if not chunk:
                    close_notify = True
                    break
                data += chunk
    header, _, body = bytes(data).partition(b"\r\n")
    return GeminiResponse(header.decode("utf-8", "replace"), body, close_notify)


def wait_for(condition: Callable[[], bool], message: str, timeout: float = LOOPBACK_TIMEOUT) -> None:
    """Poll condition until it holds, or fail the test after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        # Polling a file, a log or /proc: the condition has no event to wait on.
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {message}")


def process_exists(pid: int) -> bool:
    """Tell whether pid has a /proc entry, which a zombie still has until its parent reaps it."""
    return os.path.exists(f"/proc/{pid}")


def process_has_exited(pid: int) -> bool:
    """Tell whether pid has exited, counting a zombie that nobody reaps (its parent is gone) as exited."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


# The variables a CGI script receives for a request with a client certificate.
CGI_ENVIRONMENT_KEYS = frozenset({
    "GEMINI_URL", "HOSTNAME", "SERVER_NAME", "SERVER_PORT", "SERVER_PROTOCOL", "SERVER_SOFTWARE",
    "QUERY_STRING", "REMOTE_ADDR", "REMOTE_HOST", "TLS_CIPHER", "TLS_VERSION",
    "AUTH_TYPE", "REMOTE_USER", "TLS_CLIENT_HASH", "TLS_CLIENT_HASH_B64", "TLS_CLIENT_NOT_BEFORE",
    "TLS_CLIENT_NOT_AFTER", "TLS_CLIENT_SERIAL_NUMBER", "TLS_CLIENT_AUTHORISED",
    "GATEWAY_INTERFACE", "SCRIPT_NAME", "PATH_INFO", "PATH",
})  # fmt: skip


def wait_for_exit(process: subprocess.Popen[bytes], timeout: float = LOOPBACK_TIMEOUT) -> int:
    return process.wait(timeout=timeout)


def wait_readable(sock: socket.socket, timeout: float) -> bool:
    readable, _, _ = select.select([sock], [], [], timeout)
    return bool(readable)
