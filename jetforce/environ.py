"""
The request environment handed to applications and CGI scripts.

Keys follow CGI (RFC 3875) where one exists and Jetforce 1.0.0 otherwise.
Applications get Python values (SERVER_PORT and TLS_CLIENT_AUTHORISED are
ints, client_certificate is a cryptography Certificate); cgi_environment()
turns the upper-case entries into strings for a child process.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from .__version__ import __version__
from .tls import ClientCertificate, TLSSessionInfo

SERVER_SOFTWARE = f"jetforce/{__version__}"

_TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class ServerIdentity:
    """Hostname and port of the server, as URLs name them."""

    hostname: str
    port: int


def build_environ(
    url: str,
    server: ServerIdentity,
    remote_addr: str,
    tls: TLSSessionInfo | None,
) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "GEMINI_URL": url,
        "HOSTNAME": server.hostname,
        "SERVER_NAME": server.hostname,
        "SERVER_PORT": server.port,
        "SERVER_PROTOCOL": "GEMINI",
        "SERVER_SOFTWARE": SERVER_SOFTWARE,
        "QUERY_STRING": urlsplit(url).query,
        "REMOTE_ADDR": remote_addr,
        "REMOTE_HOST": remote_addr,
        "client_certificate": None,
    }
    if tls is not None:
        environ["TLS_CIPHER"] = tls.cipher
        environ["TLS_VERSION"] = tls.version
        if tls.client is not None:
            environ.update(client_certificate_environ(tls.client))
    return environ


def client_certificate_environ(client: ClientCertificate) -> dict[str, Any]:
    certificate = client.certificate
    digest = hashlib.sha256(certificate.public_bytes(Encoding.DER)).digest()
    return {
        "client_certificate": certificate,
        "AUTH_TYPE": "CERTIFICATE",
        "REMOTE_USER": common_name(certificate),
        "TLS_CLIENT_HASH": "SHA256:" + digest.hex().upper(),
        "TLS_CLIENT_HASH_B64": base64.urlsafe_b64encode(digest).decode("ascii"),
        "TLS_CLIENT_NOT_BEFORE": _format_timestamp(certificate.not_valid_before_utc),
        "TLS_CLIENT_NOT_AFTER": _format_timestamp(certificate.not_valid_after_utc),
        "TLS_CLIENT_SERIAL_NUMBER": certificate.serial_number,
        "TLS_CLIENT_AUTHORISED": 1 if client.authorised else 0,
    }


def common_name(certificate: x509.Certificate) -> str:
    """Return the first subject common name, or "" when there is none."""
    attributes = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attributes:
        return ""
    value = attributes[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def cgi_environment(environ: dict[str, Any]) -> dict[str, str]:
    """Return the upper-case entries of environ as strings, for a child process."""
    result = {}
    for key, value in environ.items():
        if key.isupper() and value is not None:
            result[key] = str(value)
    return result


def _format_timestamp(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).strftime(_TIMESTAMP_FORMAT)
