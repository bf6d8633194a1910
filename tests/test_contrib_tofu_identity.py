"""contrib/tofu_identity.py, started as a process; certificates become identities."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .certs import NOW, ONE_DAY, Credential, self_signed
from .harness import GeminiResponse, RunningServer, gemini_request, start_process

EXAMPLE = Path(__file__).resolve().parent.parent / "contrib" / "tofu_identity.py"

Visit = Callable[..., GeminiResponse]


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tofu")


@pytest.fixture(scope="module")
def tofu(work_dir: Path) -> Iterator[RunningServer]:
    command = [sys.executable, str(EXAMPLE), "--port", "0", "--db", str(work_dir / "identities.sqlite3")]
    server = start_process(command, work_dir)
    yield server
    server.stop()


@pytest.fixture
def visit(tofu: RunningServer, work_dir: Path) -> Visit:
    """Return a function that requests a path, presenting a credential when one is given."""

    def visit(path: str, credential: Credential | None = None, name: str = "client") -> GeminiResponse:
        files: dict[str, Path] = {}
        if credential is not None:
            files["certfile"], files["keyfile"] = credential.write(work_dir, name)
        return gemini_request(tofu.port, f"gemini://localhost{path}", **files)

    return visit


def test_tofu_protected_page_without_certificate(visit: Visit) -> None:
    for path in ("/notes", "/notes/add", "/register"):
        assert visit(path).status == 60, path


def test_tofu_unknown_certificate_is_not_authorised(visit: Visit) -> None:
    response = visit("/notes", self_signed("stranger"), "stranger")

    assert response.status == 61
    assert "/register" in response.meta


def test_tofu_expired_certificate_is_not_valid(visit: Visit) -> None:
    expired = self_signed("old", not_before=NOW - 60 * ONE_DAY, not_after=NOW - 30 * ONE_DAY)

    assert visit("/notes", expired, "old").status == 62
    assert visit("/register?old", expired, "old").status == 62


def test_tofu_not_yet_valid_certificate_is_not_valid(visit: Visit) -> None:
    future = self_signed("future", not_before=NOW + 30 * ONE_DAY, not_after=NOW + 60 * ONE_DAY)
    assert visit("/notes", future, "future").status == 62


def test_tofu_register_then_keep_notes(visit: Visit) -> None:
    frank = self_signed("frank-laptop")

    prompt = visit("/register", frank, "frank")
    assert prompt.status == 10

    registered = visit("/register?frank", frank, "frank")
    assert (registered.status, registered.meta) == (30, "/notes")

    home = visit("/", frank, "frank").body.decode()
    assert "You are frank, known by certificate SHA256:" in home

    assert visit("/notes/add", frank, "frank").status == 11
    added = visit("/notes/add?buy%20milk", frank, "frank")
    assert (added.status, added.meta) == (30, "/notes")

    notes = visit("/notes", frank, "frank")
    assert notes.header == "20 text/gemini"
    assert notes.body.decode().startswith("# Notes of frank\n")
    assert ": buy milk\n" in notes.body.decode()

    # Registering again leads to the notes instead of a second name.
    assert visit("/register?another", frank, "frank").meta == "/notes"


def test_tofu_name_taken_by_other_certificate(visit: Visit) -> None:
    assert visit("/register?grace", self_signed("grace-phone"), "grace-phone").status == 30

    response = visit("/register?GRACE", self_signed("impostor"), "impostor")

    assert response.status == 10
    assert "taken" in response.meta


def test_tofu_notes_are_per_identity(visit: Visit) -> None:
    heidi = self_signed("heidi")
    ivan = self_signed("ivan")
    visit("/register?heidi", heidi, "heidi")
    visit("/register?ivan", ivan, "ivan")

    visit("/notes/add?heidi%20secret", heidi, "heidi")

    assert "heidi secret" in visit("/notes", heidi, "heidi").body.decode()
    assert "heidi secret" not in visit("/notes", ivan, "ivan").body.decode()


def test_tofu_invalid_name_prompts_again(visit: Visit) -> None:
    assert visit("/register?no%20spaces%20please", self_signed("judy"), "judy").status == 10
