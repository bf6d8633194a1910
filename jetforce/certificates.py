"""
The self-signed server certificate used when no --tls-certfile is given.

Gemini clients pin a server's certificate on first use (TOFU), so a
certificate made afresh at every start would look like an attack after each
restart. The certificate is therefore made once per hostname and kept in a
per-user data directory: $XDG_DATA_HOME/jetforce/certs, or
~/.local/share/jetforce/certs. The directory is 0700 and the key 0600, and
both are written through O_EXCL temporary files so that nothing is ever read
from a path another user could have prepared.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# Clients whose clocks run a little behind still accept a new certificate.
NOT_BEFORE_MARGIN = datetime.timedelta(days=1)

# Long enough that a pinned certificate does not expire under its users; a
# certificate within RENEW_BEFORE of its end is replaced.
VALIDITY = datetime.timedelta(days=3650)
RENEW_BEFORE = datetime.timedelta(days=30)

_SAFE_FILE_NAME = re.compile(r"[^A-Za-z0-9.\-]")


def default_certificate_directory() -> Path:
    data_home = os.environ.get("XDG_DATA_HOME")
    base = Path(data_home) if data_home else Path.home() / ".local" / "share"
    return base / "jetforce" / "certs"


def ensure_self_signed_certificate(hostname: str, directory: Path | None = None) -> tuple[Path, Path, bool]:
    """
    Return (certfile, keyfile, created) for hostname, making the pair if needed.

    An existing pair is reused while it names hostname and stays valid for
    more than RENEW_BEFORE. Raises OSError when the directory cannot be made
    private or the files cannot be written.
    """
    directory = directory or default_certificate_directory()
    _make_private_directory(directory)

    stem = _SAFE_FILE_NAME.sub("_", hostname) or "default"
    certfile = directory / f"{stem}.crt"
    keyfile = directory / f"{stem}.key"

    if _is_reusable(certfile, keyfile, hostname):
        return certfile, keyfile, False

    key = ec.generate_private_key(ec.SECP256R1())
    certificate = make_self_signed_certificate(hostname, key)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_private_file(keyfile, key_pem)
    _write_private_file(certfile, certificate.public_bytes(serialization.Encoding.PEM))
    return certfile, keyfile, True


def make_self_signed_certificate(hostname: str, key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - NOT_BEFORE_MARGIN)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName([_subject_alternative_name(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )


def _subject_alternative_name(hostname: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(hostname))
    except ValueError:
        return x509.DNSName(hostname)


def _is_reusable(certfile: Path, keyfile: Path, hostname: str) -> bool:
    if not (certfile.is_file() and keyfile.is_file()):
        return False
    try:
        certificate = x509.load_pem_x509_certificate(certfile.read_bytes())
    except ValueError:
        return False

    common_names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not common_names or common_names[0].value != hostname:
        return False
    now = datetime.datetime.now(datetime.timezone.utc)
    return certificate.not_valid_after_utc - now > RENEW_BEFORE


def _make_private_directory(directory: Path) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    status = directory.stat()
    if status.st_uid != os.getuid():
        raise OSError(f"{directory} is owned by another user; refusing to keep a private key there")
    if status.st_mode & 0o077:
        directory.chmod(0o700)


def _write_private_file(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
