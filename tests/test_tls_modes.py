"""
Client certificate modes over real in-memory OpenSSL handshakes.

Each case builds a server with one mode, connects a client that presents
(or not) a certificate, and checks what the application saw.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from OpenSSL import SSL

from jetforce import JetforceApplication, Response, Status
from jetforce.server import ALLOW_TRANSIENT_CERTS_VARIABLE
from jetforce.tls import CertificateMode

from .certs import NOW, ONE_DAY, issue, make_ca, self_signed, server_credential
from .harness import ClientTLSOptions, connect_memory, make_memory_server

TLS_VERSIONS = {"TLSv1.2": SSL.TLS1_2_VERSION, "TLSv1.3": SSL.TLS1_3_VERSION}
CERTIFICATE_KEYS = [
    "AUTH_TYPE",
    "REMOTE_USER",
    "TLS_CLIENT_HASH",
    "TLS_CLIENT_HASH_B64",
    "TLS_CLIENT_NOT_BEFORE",
    "TLS_CLIENT_NOT_AFTER",
    "TLS_CLIENT_SERIAL_NUMBER",
    "TLS_CLIENT_AUTHORISED",
]


def environment_app() -> JetforceApplication:
    """Return an application that responds with the certificate part of its environment as JSON."""
    app = JetforceApplication()

    @app.route("")
    def show(request):
        environ = request.environ
        reported = {key: environ[key] for key in CERTIFICATE_KEYS + ["TLS_VERSION", "TLS_CIPHER"] if key in environ}
        reported["has_certificate_object"] = environ["client_certificate"] is not None
        reported["authorised_type"] = type(environ.get("TLS_CLIENT_AUTHORISED")).__name__
        return Response(Status.SUCCESS, "application/json", json.dumps(reported))

    return app


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A trusted root CA with its files, and the certificates the cases present."""
    directory: Path = tmp_path_factory.mktemp("pki")
    root = make_ca("Trusted Root")
    other_root = make_ca("Unknown Root")
    intermediate = make_ca("Trusted Intermediate", issuer=root)
    untrusted_intermediate = make_ca("Untrusted Intermediate", issuer=other_root)
    expired_intermediate = make_ca(
        "Expired Intermediate", issuer=root, not_before=NOW - 30 * ONE_DAY, not_after=NOW - ONE_DAY
    )

    server = server_credential(root)
    certfile, keyfile = server.write(directory, "server")
    cafile = directory / "ca.pem"
    cafile.write_bytes(root.certificate_pem)

    return {
        "certfile": str(certfile),
        "keyfile": str(keyfile),
        "cafile": str(cafile),
        "self_signed": self_signed("transient"),
        "self_signed_rsa": self_signed("transient-rsa", kind="rsa"),
        "ca_signed": issue(root, "verified"),
        "ca_signed_rsa": issue(root, "verified-rsa", kind="rsa"),
        "unknown_issuer": issue(other_root, "stranger"),
        "expired": issue(root, "expired", not_before=NOW - 30 * ONE_DAY, not_after=NOW - ONE_DAY),
        "not_yet_valid": issue(root, "future", not_before=NOW + ONE_DAY, not_after=NOW + 30 * ONE_DAY),
        "no_common_name": issue(root, None),
        "trusted_chain": issue(intermediate, "chained", include_ca_in_chain=True),
        "untrusted_chain": issue(untrusted_intermediate, "chained-untrusted", include_ca_in_chain=True),
        "expired_intermediate_chain": issue(expired_intermediate, "chained-expired", include_ca_in_chain=True),
    }


def serve(pki: dict, allow_transient_certs: bool, with_ca: bool):
    return make_memory_server(
        environment_app(),
        certfile=pki["certfile"],
        keyfile=pki["keyfile"],
        cafile=pki["cafile"] if with_ca else None,
        allow_transient_certs=allow_transient_certs,
    )


def request_environment(server, credential=None, version: str = "TLSv1.3") -> dict | None:
    """Return the environment the application saw, or None if no response came back."""
    options = ClientTLSOptions(credential, version=TLS_VERSIONS[version])
    connection = connect_memory(server, b"gemini://localhost/\r\n", options)
    if not connection.client.received:
        return None
    assert connection.client.header == b"20 application/json"
    return json.loads(connection.client.body)


@pytest.mark.parametrize("version", list(TLS_VERSIONS))
@pytest.mark.parametrize(
    ("allow_transient_certs", "with_ca", "credential_name", "expected_authorised"),
    [
        # Default, no CA: no certificate request, so nothing is ever received.
        (False, False, "self_signed", None),
        (False, False, "ca_signed", None),
        # Default with a CA: verified certificates only.
        (False, True, "ca_signed", 1),
        (False, True, "ca_signed_rsa", 1),
        (False, True, "trusted_chain", 1),
        # Transient, no CA: everything accepted, nothing authorised.
        (True, False, "self_signed", 0),
        (True, False, "self_signed_rsa", 0),
        (True, False, "ca_signed", 0),
        (True, False, "expired", 0),
        # Transient with a CA: accepted, and authorised when the chain verifies.
        (True, True, "ca_signed", 1),
        (True, True, "ca_signed_rsa", 1),
        (True, True, "trusted_chain", 1),
        (True, True, "self_signed", 0),
        (True, True, "unknown_issuer", 0),
        (True, True, "expired", 0),
        (True, True, "not_yet_valid", 0),
        (True, True, "untrusted_chain", 0),
        (True, True, "expired_intermediate_chain", 0),
    ],
)
def test_certificate_mode_table(pki, version, allow_transient_certs, with_ca, credential_name, expected_authorised):
    server = serve(pki, allow_transient_certs, with_ca)
    environ = request_environment(server, pki[credential_name], version)

    assert environ is not None
    assert environ["TLS_VERSION"] == version
    if expected_authorised is None:
        assert "TLS_CLIENT_HASH" not in environ
        assert environ["has_certificate_object"] is False
    else:
        assert environ["TLS_CLIENT_AUTHORISED"] == expected_authorised
        assert environ["authorised_type"] == "int"
        assert environ["has_certificate_object"] is True


@pytest.mark.parametrize("version", list(TLS_VERSIONS))
@pytest.mark.parametrize(
    "credential_name",
    ["self_signed", "unknown_issuer", "expired", "not_yet_valid", "untrusted_chain", "expired_intermediate_chain"],
)
def test_ca_mode_fails_handshake_for_unverifiable(pki, version, credential_name):
    server = serve(pki, allow_transient_certs=False, with_ca=True)
    options = ClientTLSOptions(pki[credential_name], version=TLS_VERSIONS[version])
    connection = connect_memory(server, b"gemini://localhost/\r\n", options)

    assert connection.client.received == b""
    assert connection.client.closed
    assert server.access_lines == []
    assert any("TLS handshake failed" in line for line in server.messages)


@pytest.mark.parametrize(("allow_transient_certs", "with_ca"), [(False, False), (False, True), (True, False), (True, True)])
def test_client_without_certificate_served_in_every_mode(pki, allow_transient_certs, with_ca):
    server = serve(pki, allow_transient_certs, with_ca)
    environ = request_environment(server, None)

    assert environ is not None
    for key in CERTIFICATE_KEYS:
        assert key not in environ
    assert environ["has_certificate_object"] is False


def test_certificate_environment_values_exact(pki):
    credential = pki["self_signed"]
    server = serve(pki, allow_transient_certs=True, with_ca=False)
    environ = request_environment(server, credential)

    digest = hashlib.sha256(credential.der).digest()
    assert environ["AUTH_TYPE"] == "CERTIFICATE"
    assert environ["REMOTE_USER"] == "transient"
    assert environ["TLS_CLIENT_HASH"] == "SHA256:" + digest.hex().upper()
    assert environ["TLS_CLIENT_HASH_B64"] == base64.urlsafe_b64encode(digest).decode()
    assert environ["TLS_CLIENT_NOT_BEFORE"] == credential.certificate.not_valid_before_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert environ["TLS_CLIENT_NOT_AFTER"] == credential.certificate.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert environ["TLS_CLIENT_SERIAL_NUMBER"] == credential.certificate.serial_number
    assert environ["TLS_CLIENT_AUTHORISED"] == 0


def test_certificate_without_common_name_has_empty_remote_user(pki):
    server = serve(pki, allow_transient_certs=True, with_ca=True)
    environ = request_environment(server, pki["no_common_name"])

    assert environ["REMOTE_USER"] == ""
    assert environ["TLS_CLIENT_AUTHORISED"] == 1


def test_client_certificate_object_is_cryptography_certificate(pki):
    seen = []
    app = JetforceApplication()

    @app.route("")
    def record(request):
        seen.append(request.environ["client_certificate"])
        return Response(Status.SUCCESS, "text/plain", "ok")

    server = make_memory_server(app, certfile=pki["certfile"], keyfile=pki["keyfile"], allow_transient_certs=True)
    credential = pki["self_signed"]
    connect_memory(server, b"gemini://localhost/\r\n", ClientTLSOptions(credential))

    assert seen == [credential.certificate]


def test_handshake_without_sni_uses_default_certificate(pki):
    server = serve(pki, allow_transient_certs=True, with_ca=False)
    options = ClientTLSOptions(pki["self_signed"], server_name=None)
    connection = connect_memory(server, b"gemini://127.0.0.1/\r\n", options)

    # The URL names another host than the server's, so the response is 53,
    # which proves that the handshake completed without SNI.
    assert connection.client.header.startswith(b"53 ")


@pytest.mark.parametrize(
    ("value", "expected_mode"),
    [
        ("1", CertificateMode.TRANSIENT),
        ("true", CertificateMode.TRANSIENT),
        ("YES", CertificateMode.TRANSIENT),
        ("0", CertificateMode.NOT_REQUESTED),
        ("", CertificateMode.NOT_REQUESTED),
    ],
)
def test_environment_variable_turns_on_transient_mode(monkeypatch, pki, value, expected_mode):
    monkeypatch.setenv(ALLOW_TRANSIENT_CERTS_VARIABLE, value)
    server = make_memory_server(environment_app(), certfile=pki["certfile"], keyfile=pki["keyfile"])
    assert server.certificate_mode is expected_mode


def test_keyword_overrides_environment_variable(monkeypatch, pki):
    monkeypatch.setenv(ALLOW_TRANSIENT_CERTS_VARIABLE, "1")
    server = make_memory_server(
        environment_app(), certfile=pki["certfile"], keyfile=pki["keyfile"], allow_transient_certs=False
    )
    assert server.certificate_mode is CertificateMode.NOT_REQUESTED


def test_transient_mode_through_environment_accepts_self_signed(monkeypatch, pki):
    monkeypatch.setenv(ALLOW_TRANSIENT_CERTS_VARIABLE, "yes")
    server = make_memory_server(environment_app(), certfile=pki["certfile"], keyfile=pki["keyfile"])
    environ = request_environment(server, pki["self_signed"])
    assert environ["TLS_CLIENT_AUTHORISED"] == 0


def test_minimum_tls_version_is_1_2(pki):
    server = serve(pki, allow_transient_certs=False, with_ca=False)
    options = ClientTLSOptions(None)
    options.context.set_min_proto_version(SSL.TLS1_1_VERSION)
    options.context.set_max_proto_version(SSL.TLS1_1_VERSION)
    connection = connect_memory(server, b"gemini://localhost/\r\n", options)

    assert connection.client.received == b""
    assert connection.client.closed
