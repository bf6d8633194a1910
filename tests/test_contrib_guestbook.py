"""contrib/guestbook.py, started as a process and visited over TLS."""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .certs import self_signed
from .harness import RunningServer, gemini_request, start_process

EXAMPLE = Path(__file__).resolve().parent.parent / "contrib" / "guestbook.py"


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("guestbook")


@pytest.fixture(scope="module")
def guestbook(work_dir: Path) -> Iterator[RunningServer]:
    command = [sys.executable, str(EXAMPLE), "--port", "0", "--db", str(work_dir / "guestbook.sqlite3")]
    server = start_process(command, work_dir, env={"JETFORCE_ALLOW_TRANSIENT_CERTS": "1"})
    yield server
    server.stop()


def test_guestbook_sign_prompts_for_input(guestbook: RunningServer) -> None:
    response = gemini_request(guestbook.port, "gemini://localhost/sign")

    assert response.status == 10
    assert response.meta == "Your message for the guestbook"


def test_guestbook_signed_entry_is_listed_and_stored(guestbook: RunningServer, work_dir: Path) -> None:
    signed = gemini_request(guestbook.port, "gemini://localhost/sign?Hello%20from%20a%20test")
    assert (signed.status, signed.meta) == (30, "/")

    page = gemini_request(guestbook.port, "gemini://localhost/")
    assert page.header == "20 text/gemini"
    assert "> Hello from a test\n" in page.body.decode()
    assert "## anonymous, " in page.body.decode()
    assert page.close_notify_received

    with sqlite3.connect(work_dir / "guestbook.sqlite3") as database:
        messages = [row[0] for row in database.execute("SELECT message FROM entries")]
    assert "Hello from a test" in messages


def test_guestbook_signs_with_certificate_name(guestbook: RunningServer, work_dir: Path) -> None:
    certfile, keyfile = self_signed("dana").write(work_dir, "dana")

    gemini_request(guestbook.port, "gemini://localhost/sign?Signed%20by%20Dana", certfile=certfile, keyfile=keyfile)
    page = gemini_request(guestbook.port, "gemini://localhost/")

    assert "## dana, " in page.body.decode()


def test_guestbook_message_cannot_make_links(guestbook: RunningServer) -> None:
    gemini_request(guestbook.port, "gemini://localhost/sign?%3D%3E%20gemini%3A%2F%2Fevil.example%2F%0Asecond")
    body = gemini_request(guestbook.port, "gemini://localhost/").body.decode()

    assert "\n=> gemini://evil.example/" not in body
    assert "> => gemini://evil.example/\n> second\n" in body


def test_guestbook_long_message_prompts_again(guestbook: RunningServer) -> None:
    response = gemini_request(guestbook.port, "gemini://localhost/sign?" + "x" * 600)
    assert response.status == 10
