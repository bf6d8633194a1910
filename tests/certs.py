"""
Certificates made at test time: CAs, intermediates, servers and clients.

Nothing here is checked in as key material. Every credential can be
written to PEM files for the CLI or handed to pyOpenSSL for in-memory TLS.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import crypto

NOW = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
ONE_DAY = datetime.timedelta(days=1)

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@lru_cache(maxsize=None)
def _cached_key(kind: str, slot: object) -> PrivateKey:
    return _generate_key(kind)


def _generate_key(kind: str) -> PrivateKey:
    if kind == "ecdsa":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"unknown key kind {kind!r}, expected 'ecdsa' or 'rsa'")


def make_key(kind: str = "ecdsa", slot: object = None) -> PrivateKey:
    """
    Return a private key; keys with the same kind and slot are reused to keep tests fast.

    Credentials with different names must use different slots: a shared key
    would make a "key does not match the certificate" case match after all.
    """
    if slot is None:
        return _generate_key(kind)
    return _cached_key(kind, slot)


@dataclass
class Credential:
    """A certificate, its private key and the intermediates sent after it."""

    certificate: x509.Certificate
    key: PrivateKey
    chain: list[x509.Certificate] = field(default_factory=list)

    @property
    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """Write <stem>.crt (certificate then chain) and <stem>.key; return their paths."""
        certfile = directory / f"{stem}.crt"
        keyfile = directory / f"{stem}.key"
        chain_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.chain)
        certfile.write_bytes(self.certificate_pem + chain_pem)
        keyfile.write_bytes(self.key_pem)
        keyfile.chmod(0o600)
        return certfile, keyfile

    def openssl_certificate(self) -> crypto.X509:
        return crypto.X509.from_cryptography(self.certificate)

    def openssl_chain(self) -> list[crypto.X509]:
        return [crypto.X509.from_cryptography(c) for c in self.chain]

    def openssl_key(self) -> crypto.PKey:
        return crypto.PKey.from_cryptography_key(self.key)


def _name(common_name: str | None) -> x509.Name:
    if common_name is None:
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "jetforce tests")])
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: object,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )


def make_ca(
    common_name: str = "Test Root CA",
    kind: str = "ecdsa",
    issuer: Credential | None = None,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> Credential:
    """Make a root CA, or an intermediate CA when issuer is given."""
    key = make_key(kind)
    subject = _name(common_name)
    builder = _builder(
        subject,
        issuer.certificate.subject if issuer else subject,
        key.public_key(),
        not_before or NOW - ONE_DAY,
        not_after or NOW + 365 * ONE_DAY,
    )
    builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    builder = builder.add_extension(
        x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=True,
            crl_sign=True,
            encipher_only=False,
            decipher_only=False,
        ),
        critical=True,
    )
    builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)  # type: ignore[arg-type]
    signer = issuer.key if issuer else key
    certificate = builder.sign(signer, hashes.SHA256())  # type: ignore[arg-type]
    return Credential(certificate, key)


def issue(
    ca: Credential,
    common_name: str | None = "alice",
    kind: str = "ecdsa",
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
    server_names: list[str] | None = None,
    include_ca_in_chain: bool = False,
) -> Credential:
    """Issue a leaf certificate signed by ca, for a client unless server_names is given."""
    key = make_key(kind, slot=("issued", common_name, ca.certificate.subject.rfc4514_string()))
    builder = _builder(
        _name(common_name),
        ca.certificate.subject,
        key.public_key(),
        not_before or NOW - ONE_DAY,
        not_after or NOW + 30 * ONE_DAY,
    )
    builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    if server_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name) for name in server_names]), critical=False
        )
        usage = ExtendedKeyUsageOID.SERVER_AUTH
    else:
        usage = ExtendedKeyUsageOID.CLIENT_AUTH
    builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    certificate = builder.sign(ca.key, hashes.SHA256())  # type: ignore[arg-type]
    chain = [ca.certificate] if include_ca_in_chain else []
    return Credential(certificate, key, chain)


def self_signed(
    common_name: str | None = "alice",
    kind: str = "ecdsa",
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> Credential:
    """Make a self-signed client certificate, as Gemini clients do."""
    key = make_key(kind, slot=("self-signed", common_name))
    name = _name(common_name)
    builder = _builder(
        name,
        name,
        key.public_key(),
        not_before or NOW - ONE_DAY,
        not_after or NOW + 30 * ONE_DAY,
    )
    certificate = builder.sign(key, hashes.SHA256())  # type: ignore[arg-type]
    return Credential(certificate, key)


def server_credential(ca: Credential | None = None, hostname: str = "localhost", kind: str = "ecdsa") -> Credential:
    """Make a server certificate for hostname, self-signed unless a CA is given."""
    if ca is None:
        ca = make_ca("Test Server CA", kind=kind)
    return issue(ca, hostname, kind=kind, server_names=[hostname])
