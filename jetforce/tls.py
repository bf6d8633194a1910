"""
TLS for Gemini: client certificate modes, the verify callback and close_notify.

Python's ssl module fails the handshake whenever a client certificate does
not verify, which rules out the self-signed certificates Gemini clients use
to identify a user. This module builds one pyOpenSSL context instead:

- CertificateMode selects whether the server sends a certificate request and
  whether a chain that does not verify ends the handshake.
- When a certificate is requested, OpenSSL calls the verify callback once for
  every certificate of the presented chain. The callback records a failure
  in the ChainVerdict kept for that connection and, in the transient mode,
  returns True so that the handshake goes on. The verdict is authorised only
  if no call reported a failure at any depth. Verdicts are kept in a
  WeakKeyDictionary keyed by the OpenSSL connection, because Twisted claims
  the connection's app data for its own protocol object.
- The client must still prove that it has the certificate's private key
  (the CertificateVerify message): OpenSSL checks that apart from the
  callback, so a stolen certificate still fails the handshake.
- GeminiTLSTransport closes TCP as soon as close_notify is sent, as the
  Gemini specification asks, instead of waiting for the client's.
"""

from __future__ import annotations

import enum
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cryptography import x509
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

if TYPE_CHECKING:
    from twisted.internet.interfaces import IProtocolFactory, IReactorTime
    from twisted.protocols.tls import TLSMemoryBIOProtocol

# TLS 1.2 is the minimum the Gemini specification allows.
MIN_TLS_VERSION = SSL.TLS1_2_VERSION

# Forward-secret AEAD suites for TLS 1.2, in order of preference. TLS 1.3
# suites are all AEAD and keep OpenSSL's defaults.
TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)

# OpenSSL's default limit of 100 intermediates is far more than a client
# certificate chain needs; 10 keeps the work bounded for hostile chains.
MAX_CLIENT_CHAIN_DEPTH = 10


class TLSConfigurationError(Exception):
    """The certificate, key or CA settings cannot be used."""


class CertificateMode(enum.Enum):
    """Whether a client certificate is requested and what a bad chain costs."""

    # No certificate request is sent, so clients never present one.
    NOT_REQUESTED = "not requested"
    # Requested; a chain that does not verify against the CA fails the handshake.
    CA_VERIFIED = "verified against the CA"
    # Requested; every certificate is accepted and the verdict is recorded.
    TRANSIENT = "transient certificates accepted"

    @classmethod
    def select(cls, allow_transient_certs: bool, has_ca: bool) -> CertificateMode:
        if allow_transient_certs:
            return cls.TRANSIENT
        if has_ca:
            return cls.CA_VERIFIED
        return cls.NOT_REQUESTED

    @property
    def requests_certificate(self) -> bool:
        return self is not CertificateMode.NOT_REQUESTED


@dataclass
class ChainVerdict:
    """Outcome of verifying one connection's client certificate chain."""

    failures: list[tuple[int, int]] = field(default_factory=list)

    @property
    def authorised(self) -> bool:
        return not self.failures



@dataclass(frozen=True)
class ServerCredentials:
    certfile: str
    keyfile: str
    cafile: str | None = None
    capath: str | None = None

    @property
    def has_ca(self) -> bool:
        return bool(self.cafile or self.capath)


@implementer(IOpenSSLServerConnectionCreator)
class GeminiTLSOptions:
    """
    Creator of the OpenSSL connection for each accepted TCP connection.

    The context is built once, which also checks the files: an unreadable
    certificate or key, a key that does not match the certificate or an
    unreadable CA raise TLSConfigurationError with the file named.
    """

    def __init__(self, credentials: ServerCredentials, mode: CertificateMode) -> None:
        self.credentials = credentials
        self.mode = mode
        self._verdicts: weakref.WeakKeyDictionary[SSL.Connection, ChainVerdict] = weakref.WeakKeyDictionary()
        self.context = self._make_context()

    def serverConnectionForTLS(self, protocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        self._verdicts[connection] = ChainVerdict()
        return connection

    def describe_session(self, connection: SSL.Connection) -> TLSSessionInfo:
        """Read the negotiated parameters and the client certificate of a finished handshake."""
        certificate = connection.get_peer_certificate(as_cryptography=True)
        client = None
        if certificate is not None:
            verdict = self._verdicts.get(connection, ChainVerdict())
            client = ClientCertificate(certificate=certificate, authorised=verdict.authorised)
        return TLSSessionInfo(
            cipher=connection.get_cipher_name() or "",
            version=connection.get_protocol_version_name(),
            client=client,
        )

    def _make_context(self) -> SSL.Context:
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        context.set_min_proto_version(MIN_TLS_VERSION)
        context.set_options(
            SSL.OP_NO_COMPRESSION
            | SSL.OP_NO_RENEGOTIATION
            | SSL.OP_CIPHER_SERVER_PREFERENCE
            | SSL.OP_SINGLE_ECDH_USE
            # Without resumption every handshake runs the verify callback, so
            # every connection gets a fresh verdict for its certificate.
            | SSL.OP_NO_TICKET
        )
        context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        # An idle connection would otherwise keep OpenSSL's read and write
        # buffers (about 34 KiB) allocated between records.
        context.set_mode(SSL.MODE_RELEASE_BUFFERS)
        context.set_cipher_list(TLS12_CIPHERS.encode("ascii"))

        self._load_certificate_and_key(context)
        if self.credentials.has_ca:
            self._load_ca(context)

        if self.mode.requests_certificate:
            # VERIFY_FAIL_IF_NO_PEER_CERT is left out: a client that sends no
            # certificate is always served, without the TLS_CLIENT_* variables.
            context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_CLIENT_ONCE, self._verify_callback)
            context.set_verify_depth(MAX_CLIENT_CHAIN_DEPTH)
            # NOTE: the certificate request names no acceptable CAs, so a
            # client that picks its certificate by issuer gets no hint; a
            # list would also steer clients away from transient ones.
        else:
            context.set_verify(SSL.VERIFY_NONE)
        return context

    def _load_certificate_and_key(self, context: SSL.Context) -> None:
        certfile = self.credentials.certfile
        keyfile = self.credentials.keyfile
        try:
            # The chain file may hold intermediates after the leaf; all of
            # them are sent in the handshake.
            context.use_certificate_chain_file(certfile)
        except (SSL.Error, OSError) as error:
            raise TLSConfigurationError(
                f"cannot load the certificate chain from {certfile}: {describe_ssl_error(error)}"
            ) from None
        try:
            context.use_privatekey_file(keyfile)
        except (SSL.Error, OSError) as error:
            reason = describe_ssl_error(error)
            # OpenSSL compares the key with the loaded certificate while
            # loading it, so a mismatch surfaces here as "key values mismatch".
            if "mismatch" in reason:
                raise TLSConfigurationError(
                    f"the private key in {keyfile} does not match the certificate in {certfile}"
                ) from None
            raise TLSConfigurationError(f"cannot load the private key from {keyfile}: {reason}") from None
        try:
            context.check_privatekey()
        except SSL.Error:
            raise TLSConfigurationError(
                f"the private key in {keyfile} does not match the certificate in {certfile}"
            ) from None

    def _load_ca(self, context: SSL.Context) -> None:
        cafile = self.credentials.cafile
        capath = self.credentials.capath
        try:
            context.load_verify_locations(cafile, capath)
        except (SSL.Error, OSError) as error:
            where = " and ".join(path for path in (cafile, capath) if path)
            raise TLSConfigurationError(f"cannot load CA certificates from {where}: {describe_ssl_error(error)}") from None

    def _verify_callback(
        self, connection: SSL.Connection, certificate: crypto.X509, error_number: int, depth: int, ok: int
    ) -> bool:
        # OpenSSL may call back several times for one depth and keeps going
        # after a failure when the callback returns True, so a later "ok" for
        # another depth must never clear an earlier failure.
        if not ok:
            verdict = self._verdicts.setdefault(connection, ChainVerdict())
            verdict.failures.append((depth, error_number))

        if self.mode is CertificateMode.TRANSIENT:
            return True
        return bool(ok)


@dataclass(frozen=True)
class ClientCertificate:
    """A client certificate accepted in the handshake, with its verdict."""

    certificate: x509.Certificate
    authorised: bool


@dataclass(frozen=True)
class TLSSessionInfo:
    cipher: str
    version: str
    client: ClientCertificate | None


# Largest plaintext of one TLS record (RFC 8446 section 5.1).
MAX_RECORD_PLAINTEXT = 2**14

# Bytes taken from the memory BIO per read when draining it.
BIO_READ_BYTES = 2**20


class GeminiTLSTransport(BufferingTLSTransport):
    """
    TLS transport that closes TCP right after close_notify and encrypts large writes cheaply.

    Both are overrides of private TLSMemoryBIOProtocol methods, which is why
    setup.py bounds the Twisted versions.
    """

    def _shutdownTLS(self) -> None:
        # Twisted's TLSMemoryBIOProtocol waits for the peer's close_notify
        # before it closes TCP. A Gemini server closes at once, so a client
        # that never sends its own close_notify cannot hold the connection open.
        super()._shutdownTLS()
        if self.transport is not None:
            self.transport.loseConnection()

    def _write(self, data: bytes) -> None:
        # Twisted's version copies a 16 KiB slice for every record and moves
        # each record from the memory BIO to TCP on its own. Encrypting all
        # records from memoryview slices, then draining the BIO once, carried
        # a 100 MiB file about 15% faster on one core.
        if self._lostTLSConnection:
            return

        view = memoryview(data)
        offset = 0
        while offset < len(view):
            try:
                sent = self._tlsConnection.send(view[offset : offset + MAX_RECORD_PLAINTEXT])
            except SSL.WantReadError:
                self._bufferedWrite(bytes(view[offset:]))
                break
            except SSL.Error:
                # The same as Twisted: the connection is lost, and the error
                # reaches the protocol's connectionLost. The shutdown has
                # already flushed the BIO.
                self._tlsShutdownFinished(Failure())
                return
            offset += sent

        encrypted = []
        while True:
            try:
                encrypted.append(self._tlsConnection.bio_read(BIO_READ_BYTES))
            except SSL.WantReadError:
                break
        if encrypted and self.transport is not None:
            self.transport.write(b"".join(encrypted))


class GeminiTLSFactory(TLSMemoryBIOFactory):
    protocol = GeminiTLSTransport

    def __init__(
        self, options: GeminiTLSOptions, wrapped_factory: IProtocolFactory, clock: IReactorTime | None = None
    ) -> None:
        super().__init__(options, False, wrapped_factory, clock=clock)


def describe_ssl_error(error: Exception) -> str:
    """Turn an OpenSSL error stack or an OSError into one readable phrase."""
    if isinstance(error, OSError):
        return error.strerror or str(error)
    reasons = []
    for entry in error.args[0] if error.args and isinstance(error.args[0], list) else []:
        if isinstance(entry, tuple) and entry and entry[-1]:
            reasons.append(str(entry[-1]))
    return ", ".join(reasons) or str(error) or "TLS error"
