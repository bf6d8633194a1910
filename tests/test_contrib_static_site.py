"""contrib/static_site.py, started as a process: redirects and a protected directory."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .certs import Credential, NOW, ONE_DAY, self_signed
from .harness import RunningServer, gemini_request, start_process

EXAMPLE = Path(__file__).resolve().parent.parent / "contrib" / "static_site.py"

ALICE = self_signed("alice")
BOB = self_signed("bob")
# Access depends on the fingerprint alone, so an expired certificate still opens it.
ALICE_EXPIRED = self_signed("alice-old", not_before=NOW - 60 * ONE_DAY, not_after=NOW - 30 * ONE_DAY)


def openssl_style_fingerprint(credential: Credential) -> str:
    digest = hashlib.sha256(credential.der).hexdigest().upper()
    return "sha256 Fingerprint=" + ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("static-site")


@pytest.fixture(scope="module")
def site(work_dir: Path) -> Iterator[RunningServer]:
    root = work_dir / "site"
    (root / "gemlog").mkdir(parents=True)
    (root / "private").mkdir()
    (root / "index.gmi").write_text("# Home\n")
    (root / "new.gmi").write_text("# New page\n")
    (root / "gemlog" / "post.gmi").write_text("# A post\n")
    (root / "private" / "diary.gmi").write_text("# Dear diary\n")

    command = [
        sys.executable, str(EXAMPLE), "--port", "0", "--dir", str(root),
        "--redirect", "/old.gmi=/new.gmi",
        "--redirect", "/blog/=/gemlog/",
        "--allow", "SHA256:" + hashlib.sha256(ALICE.der).hexdigest(),
        "--allow", openssl_style_fingerprint(ALICE_EXPIRED),
    ]
    server = start_process(command, work_dir)
    yield server
    server.stop()


def request_as(site: RunningServer, work_dir: Path, url: str, credential: Credential | None = None) -> tuple[int, str, str]:
    files: dict[str, Path] = {}
    if credential is not None:
        name = credential.certificate.subject.rfc4514_string().removeprefix("CN=")
        files["certfile"], files["keyfile"] = credential.write(work_dir, name)
    response = gemini_request(site.port, url, **files)
    return response.status, response.meta, response.body.decode()


@pytest.mark.parametrize(
    "path, expected",
    [
        ("/", (20, "text/gemini", "# Home\n")),
        ("/new.gmi", (20, "text/gemini", "# New page\n")),
        ("/old.gmi", (31, "/new.gmi", "")),
        ("/old.gmi?x=1", (31, "/new.gmi?x=1", "")),
        ("/blog", (31, "/gemlog", "")),
        ("/blog/post.gmi", (31, "/gemlog/post.gmi", "")),
        ("/gemlog/post.gmi", (20, "text/gemini", "# A post\n")),
        ("/missing.gmi", (51, "Not Found", "")),
    ],
)
def test_static_site_files_and_redirects(site: RunningServer, work_dir: Path, path: str, expected: tuple[int, str, str]) -> None:
    assert request_as(site, work_dir, f"gemini://localhost{path}") == expected


@pytest.mark.parametrize(
    "credential, expected_status",
    [(None, 60), (BOB, 61), (ALICE, 20), (ALICE_EXPIRED, 20)],
    ids=["no-certificate", "other-certificate", "allowed", "allowed-openssl-form"],
)
def test_static_site_private_directory(
    site: RunningServer, work_dir: Path, credential: Credential | None, expected_status: int
) -> None:
    status, _, body = request_as(site, work_dir, "gemini://localhost/private/diary.gmi", credential)

    assert status == expected_status
    assert ("Dear diary" in body) == (expected_status == 20)


def test_static_site_private_directory_listing_protected(site: RunningServer, work_dir: Path) -> None:
    assert request_as(site, work_dir, "gemini://localhost/private/")[0] == 60
    assert request_as(site, work_dir, "gemini://localhost/private")[0] == 60
    assert request_as(site, work_dir, "gemini://localhost/private/", ALICE)[0] == 20


@pytest.mark.parametrize(
    "path",
    ["/gemlog/../private/diary.gmi", "//private/diary.gmi", "/./private/diary.gmi", "/%70rivate/diary.gmi"],
)
def test_static_site_private_directory_other_spellings(site: RunningServer, work_dir: Path, path: str) -> None:
    status, _, body = request_as(site, work_dir, f"gemini://localhost{path}")

    assert status == 60
    assert "Dear diary" not in body
