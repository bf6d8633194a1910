"""contrib/ca_check.py, started as a process with a CA: CA-signed and transient certificates side by side."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .certs import Credential, NOW, ONE_DAY, issue, make_ca, self_signed
from .harness import GeminiResponse, RunningServer, gemini_request, start_process

EXAMPLE = Path(__file__).resolve().parent.parent / "contrib" / "ca_check.py"

MEMBERS_CA = make_ca("Members CA")
OTHER_CA = make_ca("Other CA")
CREDENTIALS = {
    "member": issue(MEMBERS_CA, "kim"),
    "expired-member": issue(MEMBERS_CA, "lee", not_before=NOW - 60 * ONE_DAY, not_after=NOW - 30 * ONE_DAY),
    "other-ca": issue(OTHER_CA, "mallory"),
    "self-signed": self_signed("nina"),
}


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ca-check")


@pytest.fixture(scope="module")
def ca_check(work_dir: Path) -> Iterator[RunningServer]:
    cafile = work_dir / "members-ca.pem"
    cafile.write_bytes(MEMBERS_CA.certificate_pem)
    server = start_process([sys.executable, str(EXAMPLE), "--port", "0", "--tls-cafile", str(cafile)], work_dir)
    yield server
    server.stop()


def request_as(server: RunningServer, work_dir: Path, path: str, kind: str | None) -> GeminiResponse:
    files: dict[str, Path] = {}
    if kind is not None:
        credential: Credential = CREDENTIALS[kind]
        files["certfile"], files["keyfile"] = credential.write(work_dir, kind)
    return gemini_request(server.port, f"gemini://localhost{path}", **files)


@pytest.mark.parametrize(
    "kind, expected_verdict, expected_members_status",
    [
        ("member", "yes (TLS_CLIENT_AUTHORISED=1)", 20),
        ("expired-member", "no, a transient certificate (TLS_CLIENT_AUTHORISED=0)", 61),
        ("other-ca", "no, a transient certificate (TLS_CLIENT_AUTHORISED=0)", 61),
        ("self-signed", "no, a transient certificate (TLS_CLIENT_AUTHORISED=0)", 61),
    ],
)
def test_ca_check_shows_identity_and_verdict(
    ca_check: RunningServer, work_dir: Path, kind: str, expected_verdict: str, expected_members_status: int
) -> None:
    body = request_as(ca_check, work_dir, "/", kind).body.decode()

    # Every certificate gets an identity, whatever the CA verdict.
    assert "* Fingerprint: SHA256:" in body
    assert f"* Signed by the server's CA: {expected_verdict}\n" in body
    assert request_as(ca_check, work_dir, "/members", kind).status == expected_members_status


def test_ca_check_without_certificate(ca_check: RunningServer, work_dir: Path) -> None:
    assert "You presented no client certificate." in request_as(ca_check, work_dir, "/", None).body.decode()
    assert request_as(ca_check, work_dir, "/members", None).status == 60


def test_ca_check_member_is_welcomed_by_name(ca_check: RunningServer, work_dir: Path) -> None:
    assert "Welcome, kim." in request_as(ca_check, work_dir, "/members", "member").body.decode()
