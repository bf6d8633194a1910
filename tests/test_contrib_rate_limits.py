"""contrib/rate_limits.py, started as a process; each route counts on its own."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .certs import self_signed
from .harness import RunningServer, gemini_request, start_process

EXAMPLE = Path(__file__).resolve().parent.parent / "contrib" / "rate_limits.py"


@pytest.fixture
def rate_limits(tmp_path: Path) -> Iterator[RunningServer]:
    # One process per test: the counts of one test must not leak into the next.
    server = start_process([sys.executable, str(EXAMPLE), "--port", "0"], tmp_path, env={"JETFORCE_ALLOW_TRANSIENT_CERTS": "1"})
    yield server
    server.stop()


def test_rate_limits_apply_per_route(rate_limits: RunningServer) -> None:
    for _ in range(3):
        assert gemini_request(rate_limits.port, "gemini://localhost/search?or").status == 20

    limited = gemini_request(rate_limits.port, "gemini://localhost/search?or")
    assert limited.status == 44
    assert 1 <= int(limited.meta) <= 60

    # Other routes keep their own counts, and the index has none.
    assert gemini_request(rate_limits.port, "gemini://localhost/roll").status == 20
    for _ in range(5):
        assert gemini_request(rate_limits.port, "gemini://localhost/").status == 20


def test_rate_limit_by_certificate(rate_limits: RunningServer, tmp_path: Path) -> None:
    alice = self_signed("alice").write(tmp_path, "alice")
    bob = self_signed("bob").write(tmp_path, "bob")

    def report(credential: tuple[Path, Path]) -> int:
        certfile, keyfile = credential
        return gemini_request(rate_limits.port, "gemini://localhost/report?broken", certfile=certfile, keyfile=keyfile).status

    assert [report(alice), report(alice), report(alice)] == [20, 20, 44]
    # Same address, another certificate: a count of its own.
    assert report(bob) == 20
