"""
GeminiServer: the protocol factory, its listening ports and its logs.

The factory stack for each accepted TCP connection is, from the socket in:
HAProxy PROXY header reader (with proxy_protocol), GeminiTLSTransport (with
use_tls), then GeminiProtocol. build_transport_factory() returns the
outermost factory, which tests drive in memory without listening.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from typing import Any, cast

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.internet.protocol import Factory
from twisted.logger import ILogObserver, Logger, LogLevel, globalLogPublisher
from twisted.internet.endpoints import AdoptedStreamServerEndpoint, TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.protocols.haproxy import proxyEndpoint
from twisted.python.failure import Failure
from zope.interface import provider

from .__version__ import __version__
from .certificates import ensure_self_signed_certificate
from .environ import ServerIdentity
from .logs import LogRenderer, format_access_line, format_address
from .protocol import REQUEST_TIMEOUT, WRITE_TIMEOUT, ConnectionState, GeminiProtocol
from .streaming import ResponseOutcome
from .tls import CertificateMode, GeminiTLSFactory, GeminiTLSOptions, ServerCredentials, describe_ssl_error
from .wire import normalize_hostname

# Connections the kernel queues before accept(). A burst of new Gemini
# connections (one per request) overflows Twisted's default of 50.
DEFAULT_BACKLOG = 1024

# Environment variable that turns on transient certificates for servers
# built without the allow_transient_certs keyword.
ALLOW_TRANSIENT_CERTS_VARIABLE = "JETFORCE_ALLOW_TRANSIENT_CERTS"
_TRUE_VALUES = frozenset({"1", "true", "yes"})

# Failed handshakes are logged one by one up to this many per window, then
# counted and summarised once the window ends.
HANDSHAKE_FAILURES_LOGGED_PER_WINDOW = 10
HANDSHAKE_FAILURE_WINDOW = 60.0

# Open connections at which the server stops accepting new ones. Each takes
# one file descriptor, and a CGI request three more for the script's pipes.
DEFAULT_MAX_CONNECTIONS = 2048
FILE_DESCRIPTORS_PER_CONNECTION = 4
RESERVED_FILE_DESCRIPTORS = 64

# Accepting resumes once the open connections fall below this share of the
# maximum, so that a server at its limit does not flap on every close.
RESUME_ACCEPTING_RATIO = 0.9

# Seconds that responses in flight get to finish after SIGTERM or SIGINT.
SHUTDOWN_TIMEOUT = 10.0


def _port_address(port: IListeningPort) -> IPv4Address | IPv6Address:
    # Every port the server listens on is a TCP port, bound or adopted.
    return cast("IPv4Address | IPv6Address", port.getHost())


def transient_certs_from_environment() -> bool:
    value = os.environ.get(ALLOW_TRANSIENT_CERTS_VARIABLE, "")
    return value.strip().lower() in _TRUE_VALUES


class GeminiServer(Factory):
    protocol_class = GeminiProtocol

    def __init__(
        self,
        app: Any,
        reactor: Any = None,
        host: str = "127.0.0.1",
        port: int = 1965,
        hostname: str = "localhost",
        certfile: str | None = None,
        keyfile: str | None = None,
        cafile: str | None = None,
        capath: str | None = None,
        proxy_protocol: bool = False,
        use_tls: bool = True,
        allow_transient_certs: bool | None = None,
        *,
        request_timeout: float = REQUEST_TIMEOUT,
        write_timeout: float = WRITE_TIMEOUT,
        backlog: int = DEFAULT_BACKLOG,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        shutdown_timeout: float = SHUTDOWN_TIMEOUT,
        sockets: list[socket.socket] | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        if allow_transient_certs is None:
            allow_transient_certs = transient_certs_from_environment()

        self.app = app
        self.reactor = reactor
        self.host = host
        self.port = port
        self.hostname = hostname
        self.certfile = certfile
        self.keyfile = keyfile
        self.cafile = cafile
        self.capath = capath
        self.proxy_protocol = proxy_protocol
        self.use_tls = use_tls
        self.allow_transient_certs = bool(allow_transient_certs)
        self.request_timeout = request_timeout
        self.write_timeout = write_timeout
        self.backlog = backlog
        self.max_connections = max_connections
        self.shutdown_timeout = shutdown_timeout
        self.connections: set[GeminiProtocol] = set()
        # Listening sockets opened before this process forked (--workers);
        # initialize() adopts them instead of binding its own.
        self.sockets = sockets

        self.certificate_mode = CertificateMode.select(self.allow_transient_certs, bool(cafile or capath))
        self.listening_ports: list[IListeningPort] = []
        self.log = Logger(namespace="jetforce", source=self, observer=LogRenderer(self._log_line))

        self._identity = ServerIdentity(normalize_hostname(hostname), port)
        self._tls_options: GeminiTLSOptions | None = None
        self._warned_certificate_not_requested = False
        self._handshake_failures_in_window = 0
        self._handshake_window_start = 0.0
        self._handshake_summary_call: Any = None
        self._accepting_paused = False
        self._shutdown: Deferred[None] | None = None
        # Set by the SIGTERM and SIGINT handlers, so that a second signal exits at once.
        self._stopping_by_signal = False

    # Hooks that applications written for Jetforce 1.0.0 override.

    def log_access(self, message: str) -> None:
        """Write one access log line to stdout and flush it, so that a pipe or journald receives it at once."""
        sys.stdout.write(message + "\n")
        sys.stdout.flush()

    def log_message(self, message: str) -> None:
        """Write a diagnostic message to stderr."""
        sys.stderr.write(message + "\n")
        sys.stderr.flush()

    def on_bind_interface(self, port: IListeningPort) -> None:
        address = _port_address(port)
        self.log.info("Listening on {address}", address=format_address(address.host, address.port))

    # Protocol factory.

    def buildProtocol(self, addr: Any) -> GeminiProtocol:
        protocol = self.protocol_class(self, self.app)
        protocol.factory = self
        return protocol

    @property
    def identity(self) -> ServerIdentity:
        return self._identity

    def build_transport_factory(self) -> IProtocolFactory:
        """Return the factory to listen with: this one, wrapped in TLS unless use_tls is off."""
        if not self.use_tls:
            return self
        return GeminiTLSFactory(self.tls_options(), self, clock=self.reactor)

    def tls_options(self) -> GeminiTLSOptions:
        """
        Build the TLS options on first use, loading and checking the files.

        Raises TLSConfigurationError for unusable files and OSError when the
        self-signed certificate cannot be written.
        """
        if self._tls_options is None:
            certfile, keyfile = self._certificate_files()
            credentials = ServerCredentials(certfile, keyfile, self.cafile, self.capath)
            self._tls_options = GeminiTLSOptions(credentials, self.certificate_mode)
        return self._tls_options

    def _certificate_files(self) -> tuple[str, str]:
        if self.certfile:
            return self.certfile, self.keyfile or self.certfile

        certfile, keyfile, created = ensure_self_signed_certificate(self.hostname)
        action = "Created" if created else "Using"
        self.log.info(
            "{action} a self-signed certificate for {hostname}: {certfile}",
            action=action,
            hostname=self.hostname,
            certfile=str(certfile),
        )
        return str(certfile), str(keyfile)

    # Starting.

    def initialize(self) -> None:
        """
        Listen on every configured interface without running the reactor.

        Raises CannotListenError when a port cannot be bound, and the errors
        of tls_options() for unusable certificate files.
        """
        factory = self.build_transport_factory()
        self.log.info("jetforce {version} serving gemini://{hostname}/", version=__version__, hostname=self.hostname)
        if self.use_tls:
            self._log_tls_configuration()
        else:
            self.log.info("TLS is off (--no-tls): expecting a TLS-terminating proxy in front")
        if self.proxy_protocol:
            self.log.info("Expecting a PROXY protocol header (v1 or v2) before each connection")

        if self.sockets:
            for listener in self.sockets:
                port = self._adopt(factory, listener)
                self.listening_ports.append(port)
                self.on_bind_interface(port)
        else:
            for interface in self._interfaces():
                bound_port = self._listen(factory, interface)
                if bound_port is not None:
                    self.listening_ports.append(bound_port)
                    self.on_bind_interface(bound_port)

        self.max_connections = self._fit_to_file_descriptor_limit(self.max_connections)
        self.reactor.addSystemEventTrigger("before", "shutdown", self.shutdown)
        globalLogPublisher.addObserver(self._global_log_observer)

    def run(self) -> None:
        """Listen, then run the reactor until it stops."""
        self.initialize()
        self.run_reactor()

    def run_reactor(self) -> None:
        """Run the reactor, with SIGTERM and SIGINT starting a graceful shutdown."""
        self.reactor.callWhenRunning(self._install_signal_handlers)
        self.reactor.run()

    def _interfaces(self) -> list[str]:
        # An empty host means every interface, IPv6 first: on Linux one "::"
        # socket usually takes IPv4 too, and then "0.0.0.0" is already bound.
        if self.host == "":
            return ["::", "0.0.0.0"]
        return [self.host]

    def _listen(self, factory: IProtocolFactory, interface: str) -> IListeningPort | None:
        try:
            port = self._listen_endpoint(factory, interface)
        except CannotListenError:
            if self.host == "" and interface == "0.0.0.0" and self.listening_ports:
                self.log.info("IPv4 is served by the IPv6 socket on [::]:{port}", port=self.port)
                return None
            raise

        # With port 0 the kernel picks the port; the environment and the
        # host checks must use the real one, and a second interface the same.
        if self.port == 0:
            self.port = _port_address(port).port
            self._identity = ServerIdentity(self._identity.hostname, self.port)
        return port

    def _adopt(self, factory: IProtocolFactory, listener: socket.socket) -> IListeningPort:
        endpoint = AdoptedStreamServerEndpoint(self.reactor, listener.fileno(), listener.family)
        port = self._listen_on(endpoint, factory)
        # Twisted listens on a duplicate and closes the adopted descriptor
        # itself, so the socket object must forget it without closing it.
        listener.detach()
        if self.port == 0:
            self.port = _port_address(port).port
            self._identity = ServerIdentity(self._identity.hostname, self.port)
        return port

    def _listen_endpoint(self, factory: IProtocolFactory, interface: str) -> IListeningPort:
        endpoint_class = TCP6ServerEndpoint if ":" in interface else TCP4ServerEndpoint
        endpoint = endpoint_class(self.reactor, self.port, backlog=self.backlog, interface=interface)
        return self._listen_on(endpoint, factory)

    def _listen_on(self, endpoint: Any, factory: IProtocolFactory) -> IListeningPort:
        if self.proxy_protocol:
            # The PROXY header comes before the TLS handshake, so its reader
            # wraps the TLS factory, nearest to the socket.
            endpoint = proxyEndpoint(endpoint)

        # TCP endpoints listen synchronously; the Deferred has fired already.
        results: list[IListeningPort] = []
        failures: list[Failure] = []
        endpoint.listen(factory).addCallbacks(results.append, failures.append)
        if failures:
            failures[0].raiseException()
        return results[0]

    def _log_tls_configuration(self) -> None:
        options = self.tls_options()
        credentials = options.credentials
        self.log.info(
            "TLS certificate {certfile}, key {keyfile}", certfile=credentials.certfile, keyfile=credentials.keyfile
        )
        ca = " and ".join(path for path in (credentials.cafile, credentials.capath) if path) or "none"
        self.log.info(
            "Client certificates: {mode} (CA: {ca})",
            mode=self.certificate_mode.value,
            ca=ca,
        )

    # Logging on behalf of protocols.

    def _log_line(self, line: str) -> None:
        self.log_message(line)

    @provider(ILogObserver)
    def _global_log_observer(self, event: dict[str, Any]) -> None:
        # Modules without a server at hand (static files, CGI) log to the
        # global publisher, and so does Twisted for unhandled errors. Their
        # events reach log_message() like the server's own.
        namespace = event.get("log_namespace") or ""
        level = event.get("log_level", LogLevel.info)
        if namespace.startswith("jetforce") or level >= LogLevel.error:
            self.log.observer(event)

    def write_access_log(self, remote_addr: str, url: str, outcome: ResponseOutcome) -> None:
        self.log_access(format_access_line(remote_addr, url, outcome.status, outcome.meta, outcome.bytes_sent))

    def note_certificate_required(self) -> None:
        """Warn once when an application requests certificates that clients cannot send."""
        if self.certificate_mode is not CertificateMode.NOT_REQUESTED or self._warned_certificate_not_requested:
            return
        self._warned_certificate_not_requested = True
        self.log.warn(
            "An application responded 60 (client certificate required), but this server does not "
            "request client certificates, so clients cannot send one. Start it with "
            "--allow-transient-certs (or allow_transient_certs=True), or give a CA with --tls-cafile."
        )

    def note_handshake_failure(self, remote_addr: str, reason: Failure) -> None:
        """Log a failed handshake, summarising floods instead of logging each one."""
        if self._handshake_summary_call is None:
            self._handshake_failures_in_window = 0
            self._handshake_summary_call = self.reactor.callLater(
                HANDSHAKE_FAILURE_WINDOW, self._summarise_handshake_failures
            )

        self._handshake_failures_in_window += 1
        if self._handshake_failures_in_window <= HANDSHAKE_FAILURES_LOGGED_PER_WINDOW:
            self.log.info(
                "{peer} TLS handshake failed: {reason}",
                peer=remote_addr,
                reason=describe_connection_failure(reason),
            )
        elif self._handshake_failures_in_window == HANDSHAKE_FAILURES_LOGGED_PER_WINDOW + 1:
            self.log.warn(
                "More than {count} TLS handshakes failed within {window:g} s; counting the rest",
                count=HANDSHAKE_FAILURES_LOGGED_PER_WINDOW,
                window=HANDSHAKE_FAILURE_WINDOW,
            )

    def _summarise_handshake_failures(self) -> None:
        self._handshake_summary_call = None
        suppressed = self._handshake_failures_in_window - HANDSHAKE_FAILURES_LOGGED_PER_WINDOW
        if suppressed > 0:
            self.log.warn(
                "{count} more TLS handshakes failed in the last {window:g} s",
                count=suppressed,
                window=HANDSHAKE_FAILURE_WINDOW,
            )
        self._handshake_failures_in_window = 0

    # Connection limits.

    def connection_opened(self, protocol: GeminiProtocol) -> None:
        self.connections.add(protocol)
        if len(self.connections) >= self.max_connections and not self._accepting_paused:
            self._accepting_paused = True
            for port in self.listening_ports:
                self.reactor.removeReader(port)
            self.log.warn(
                "Reached {count} open connections, the maximum; not accepting new ones until some close",
                count=len(self.connections),
            )

    def connection_closed(self, protocol: GeminiProtocol) -> None:
        self.connections.discard(protocol)
        if self._accepting_paused and len(self.connections) < self.max_connections * RESUME_ACCEPTING_RATIO:
            self._accepting_paused = False
            if self._shutdown is None:
                for port in self.listening_ports:
                    self.reactor.addReader(port)
                self.log.info("Accepting connections again ({count} open)", count=len(self.connections))
        if self._shutdown is not None and not self.connections and not self._shutdown.called:
            self._shutdown.callback(None)

    def _fit_to_file_descriptor_limit(self, requested: int) -> int:
        try:
            import resource

            soft_limit, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        except (ImportError, ValueError, OSError):
            return requested
        if soft_limit == resource.RLIM_INFINITY:
            return requested

        available = max((soft_limit - RESERVED_FILE_DESCRIPTORS) // FILE_DESCRIPTORS_PER_CONNECTION, 1)
        if requested > available:
            self.log.warn(
                "Lowering the maximum of open connections from {requested} to {available} to fit the "
                "open file limit of {limit} (raise it with ulimit -n)",
                requested=requested,
                available=available,
                limit=soft_limit,
            )
            return available
        return requested

    # Shutting down.

    def shutdown(self) -> Deferred[None]:
        """
        Stop accepting, let responses in flight finish, and abort what is left after shutdown_timeout.

        Runs as a "before shutdown" trigger of the reactor, which waits for
        the returned Deferred before it stops.
        """
        if self._shutdown is not None:
            return self._shutdown
        self._shutdown = Deferred()

        for port in self.listening_ports:
            port.stopListening()
        if self._handshake_summary_call is not None and self._handshake_summary_call.active():
            self._handshake_summary_call.cancel()
            self._summarise_handshake_failures()

        if not self.connections:
            self.log.info("Shutting down: no connections open")
            self._shutdown.callback(None)
            return self._shutdown

        self.log.info(
            "Shutting down: waiting up to {timeout:g} s for {count} open connections",
            timeout=self.shutdown_timeout,
            count=len(self.connections),
        )
        deadline = self.reactor.callLater(self.shutdown_timeout, self._abort_remaining_connections)
        self._shutdown.addBoth(_cancel_delayed_call, deadline)
        return self._shutdown

    def _abort_remaining_connections(self) -> None:
        remaining = list(self.connections)
        cut = [protocol for protocol in remaining if protocol.state is ConnectionState.RESPONDING]
        self.log.warn(
            "Shutdown timeout of {timeout:g} s reached: aborting {count} connections, {cut} of them mid-response",
            timeout=self.shutdown_timeout,
            count=len(remaining),
            cut=len(cut),
        )
        for protocol in remaining:
            protocol.abort("the server is shutting down")
        if self._shutdown is not None and not self._shutdown.called:
            self._shutdown.callback(None)

    def _install_signal_handlers(self) -> None:
        # Twisted's own SIGTERM and SIGINT handlers stop the reactor, which
        # runs shutdown() first. These replace them only to make a second
        # signal exit at once, for an operator who does not want to wait.
        def handle(signal_number: int, frame: Any) -> None:
            if self._stopping_by_signal:
                os._exit(128 + signal_number)
            self._stopping_by_signal = True
            self.reactor.callFromThread(self._stop_reactor, signal.Signals(signal_number).name)

        self._stopping_by_signal = False
        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    def _stop_reactor(self, signal_name: str) -> None:
        self.log.info("Received {signal}; shutting down (send it again to exit at once)", signal=signal_name)
        if self.reactor.running:
            self.reactor.stop()


def _cancel_delayed_call(result: Any, call: Any) -> Any:
    if call.active():
        call.cancel()
    return result


def describe_connection_failure(reason: Failure) -> str:
    from OpenSSL import SSL
    from twisted.internet.error import ConnectionDone, ConnectionLost

    error = reason.value
    if isinstance(error, SSL.Error):
        return describe_ssl_error(error)
    if isinstance(error, (ConnectionDone, ConnectionLost)):
        return "the client closed the connection before the handshake completed"
    return str(error) or type(error).__name__

