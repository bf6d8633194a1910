"""
One Gemini connection, from accept to close_notify.

When TLS is on, GeminiProtocol sits inside GeminiTLSTransport, which calls
connectionMade as soon as TCP is accepted, before the handshake. The
request timer (REQUEST_TIMEOUT seconds) starts there, so it covers the
handshake and the request line together. The connection then moves through
ConnectionState:

- WAITING_FOR_REQUEST: bytes feed a RequestLineReader. A complete line
  starts the response, a bad one gets a response with its status (59) at
  once, and the timer running out closes the connection.
- RESPONDING: a ResponseStreamer writes the application's header and body.
  Bytes from the client are ignored: one connection, one request. While the
  transport has paused the streamer (its buffer is full), the write timer
  runs; a client that takes nothing for WRITE_TIMEOUT seconds is aborted.
  Waiting on the application (a Deferred chunk) is not a stall.
- CLOSING: loseConnection() was called. The TLS transport sends
  close_notify and closes TCP once its buffer drains, without waiting for
  the client's close_notify. A client that never drains it is aborted after
  WRITE_TIMEOUT seconds.
- CLOSED: connectionLost ran. Nothing leaves this state.

Every response, errors included, gets one access log line.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, cast

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IConsumer, IDelayedCall, IHandshakeListener, ISSLTransport, ITCPTransport
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from .environ import build_environ
from .errors import RequestError
from .streaming import ResponseOutcome, ResponseStreamer
from .wire import RequestLineReader, format_response_header

if TYPE_CHECKING:
    from .server import GeminiServer
    from .tls import GeminiTLSTransport

# Gemini clients send the request right after the handshake; a connection
# that has not sent a complete line this many seconds after accept is closed.
REQUEST_TIMEOUT = 10.0

# Seconds a client may leave a full send buffer untouched before the
# connection is aborted.
WRITE_TIMEOUT = 30.0

# The status that requests a certificate from the client. The server warns when an
# application sends it while the server never requests certificates.
CLIENT_CERTIFICATE_REQUIRED = 60


class ConnectionState(enum.Enum):
    WAITING_FOR_REQUEST = "waiting for the request"
    RESPONDING = "responding"
    CLOSING = "closing"
    CLOSED = "closed"


_ALLOWED_TRANSITIONS: dict[ConnectionState, frozenset[ConnectionState]] = {
    ConnectionState.WAITING_FOR_REQUEST: frozenset(
        {ConnectionState.RESPONDING, ConnectionState.CLOSING, ConnectionState.CLOSED}
    ),
    ConnectionState.RESPONDING: frozenset({ConnectionState.CLOSING, ConnectionState.CLOSED}),
    ConnectionState.CLOSING: frozenset({ConnectionState.CLOSED}),
    ConnectionState.CLOSED: frozenset(),
}


def format_peer(address: object) -> str:
    if isinstance(address, (IPv4Address, IPv6Address)):
        return address.host
    return str(address)


@implementer(IHandshakeListener)
class GeminiProtocol(Protocol):
    def __init__(self, server: GeminiServer, app: Any) -> None:
        self.server = server
        self.app = app
        self.state = ConnectionState.WAITING_FOR_REQUEST
        self.remote_addr = "-"
        self.handshake_done = False
        self._reader = RequestLineReader()
        # The one deadline of the current state: the request, a stalled
        # write, or the end of closing.
        self._timeout_call: IDelayedCall | None = None
        self._streamer: ResponseStreamer | None = None
        self._url = ""

    @property
    def log(self) -> Any:
        return self.server.log

    @property
    def _tcp_transport(self) -> ITCPTransport | None:
        """
        The transport, or None before makeConnection.

        Protocol declares it as an ITransport, but this protocol runs only on
        Twisted's TCP transport, on GeminiTLSTransport, or on the HAProxy
        wrapper, which provides the interfaces of the transport it wraps.
        All of them provide ITCPTransport.
        """
        return cast("ITCPTransport | None", self.transport)

    def _set_state(self, new_state: ConnectionState) -> None:
        if new_state not in _ALLOWED_TRANSITIONS[self.state]:
            raise RuntimeError(f"connection from {self.remote_addr} cannot go from {self.state} to {new_state}")
        self.state = new_state

    # Events from the transport.

    def connectionMade(self) -> None:
        self._refresh_remote_addr()
        self.server.connection_opened(self)
        self._start_timer(self.server.request_timeout, self._request_timed_out)

    def handshakeCompleted(self) -> None:
        self.handshake_done = True
        self._refresh_remote_addr()

    def dataReceived(self, data: bytes) -> None:
        if self.state is not ConnectionState.WAITING_FOR_REQUEST:
            return

        try:
            url = self._reader.feed(data)
        except RequestError as error:
            self._cancel_timeout()
            self._refresh_remote_addr()
            self._reject(error)
            return
        if url is None:
            return

        self._cancel_timeout()
        self._refresh_remote_addr()
        self._respond(url)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        previous_state = self.state
        self._cancel_timeout()
        if self.state is not ConnectionState.CLOSED:
            self._set_state(ConnectionState.CLOSED)
        self.server.connection_closed(self)

        if previous_state is ConnectionState.RESPONDING and self._streamer is not None:
            # The client went away mid-response: stop pulling the body and
            # cancel any Deferred the application is waiting on.
            self._streamer.stopProducing()
            outcome = self._streamer.outcome
            self.log.info(
                "{peer} disconnected during the response to {url} after {count} bytes",
                peer=self.remote_addr,
                url=self._url,
                count=outcome.bytes_sent,
            )
            self._log_access(self._url, outcome)
        elif previous_state is ConnectionState.WAITING_FOR_REQUEST:
            self._log_early_close(reason)

    def _refresh_remote_addr(self) -> None:
        # With --proxy-protocol this protocol is connected at accept, before
        # the PROXY header has been read, so the client's address is only
        # known once bytes arrive.
        transport = self._tcp_transport
        if transport is None:
            return
        self.remote_addr = format_peer(transport.getPeer())

    # Request handling.

    def _respond(self, url: str) -> None:
        transport = self._tcp_transport
        if transport is None:
            return
        self._set_state(ConnectionState.RESPONDING)
        self._url = url
        streamer = ResponseStreamer(
            # Every transport this protocol runs on has registerProducer and
            # unregisterProducer, though not all declare IConsumer.
            transport=cast(IConsumer, transport),
            clock=self.server.reactor,
            log=self.log,
            peer=self.remote_addr,
            url=url,
            on_finished=self._response_finished,
            on_pause=self._write_paused,
            on_resume=self._cancel_timeout,
        )
        self._streamer = streamer
        environ = build_environ(url, self.server.identity, self.remote_addr, self._tls_session())

        try:
            body = self.app(environ, streamer.send_status)
        except Exception:
            streamer.fail(Failure())
            return
        streamer.start(body)

    def _tls_session(self) -> Any:
        transport = self.transport
        if transport is None or not ISSLTransport.providedBy(transport):
            return None
        # GeminiTLSTransport is the only ISSLTransport this protocol runs on,
        # and its getHandle() returns the OpenSSL connection.
        tls_transport = cast("GeminiTLSTransport", transport)
        return self.server.tls_options().describe_session(tls_transport.getHandle())

    def _response_finished(self, outcome: ResponseOutcome) -> None:
        self._log_access(self._url, outcome)
        if outcome.status == CLIENT_CERTIFICATE_REQUIRED:
            self.server.note_certificate_required()
        self._close()

    def _reject(self, error: RequestError) -> None:
        """Respond to a request that cannot be parsed with the error's status, then close."""
        transport = self._tcp_transport
        if transport is None:
            return
        self._set_state(ConnectionState.RESPONDING)
        header = format_response_header(error.status, error.meta)
        transport.write(header)
        self.log.info("{peer} bad request: {error}", peer=self.remote_addr, error=error.meta)
        outcome = ResponseOutcome(status=error.status, meta=error.meta, bytes_sent=len(header), complete=True)
        self._log_access(self._reader.preview(), outcome)
        self._close()

    def _write_paused(self) -> None:
        self._start_timer(self.server.write_timeout, self._write_timed_out)

    def _write_timed_out(self) -> None:
        self._timeout_call = None
        self.log.info(
            "{peer} read nothing of the response to {url} for {timeout:g} s; aborting the connection",
            peer=self.remote_addr,
            url=self._url,
            timeout=self.server.write_timeout,
        )
        self._abort_transport()

    def _close_timed_out(self) -> None:
        self._timeout_call = None
        self.log.info(
            "{peer} did not read the end of its response within {timeout:g} s; aborting the connection",
            peer=self.remote_addr,
            timeout=self.server.write_timeout,
        )
        self._abort_transport()

    def _request_timed_out(self) -> None:
        self._timeout_call = None
        if self.state is not ConnectionState.WAITING_FOR_REQUEST:
            return
        stage = "the request" if self.handshake_done or not self.server.use_tls else "the TLS handshake"
        self.log.info(
            "{peer} timed out after {timeout:g} s waiting for {stage}; closing",
            peer=self.remote_addr,
            timeout=self.server.request_timeout,
            stage=stage,
        )
        self._close()

    # Closing.

    def _close(self) -> None:
        if self.state in (ConnectionState.CLOSING, ConnectionState.CLOSED):
            return
        transport = self._tcp_transport
        if transport is None:
            return
        self._set_state(ConnectionState.CLOSING)
        # Before the handshake completes the TLS transport aborts instead,
        # because no close_notify can be sent yet.
        transport.loseConnection()
        if self.state is ConnectionState.CLOSING:
            self._start_timer(self.server.write_timeout, self._close_timed_out)

    def abort(self, reason: str) -> None:
        """Drop the connection at once, logging why; used when a shutdown runs out of time."""
        if self.state is ConnectionState.CLOSED:
            return
        self.log.info("{peer} aborting the connection: {reason}", peer=self.remote_addr, reason=reason)
        # Stopping the response first ends a CGI script or cancels an
        # application's Deferred now, before the reactor may stop.
        if self._streamer is not None:
            self._streamer.stopProducing()
        self._abort_transport()

    def _abort_transport(self) -> None:
        transport = self._tcp_transport
        if transport is not None:
            transport.abortConnection()

    def _start_timer(self, seconds: float, callback: Any) -> None:
        self._cancel_timeout()
        self._timeout_call = self.server.reactor.callLater(seconds, callback)

    def _cancel_timeout(self) -> None:
        if self._timeout_call is not None and self._timeout_call.active():
            self._timeout_call.cancel()
        self._timeout_call = None

    def _log_access(self, url: str, outcome: ResponseOutcome) -> None:
        self.server.write_access_log(self.remote_addr, url, outcome)

    def _log_early_close(self, reason: Failure) -> None:
        if self.server.use_tls and not self.handshake_done:
            self.server.note_handshake_failure(self.remote_addr, reason)
        else:
            self.log.debug("{peer} closed the connection without sending a request", peer=self.remote_addr)
