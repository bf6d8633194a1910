"""contrib/counter.py, started as a process; counts survive a restart."""

from __future__ import annotations

import sys
from pathlib import Path

from .harness import gemini_request, start_process

EXAMPLE = Path(__file__).resolve().parent.parent / "contrib" / "counter.py"


def test_counter_counts_each_page_and_survives_restart(tmp_path: Path) -> None:
    command = [sys.executable, str(EXAMPLE), "--port", "0", "--db", str(tmp_path / "counter.sqlite3")]

    server = start_process(command, tmp_path)
    try:
        first = gemini_request(server.port, "gemini://localhost/a")
        assert first.header == "20 text/gemini"
        assert "This page (/a) has been visited 1 time.\n" in first.body.decode()

        second = gemini_request(server.port, "gemini://localhost/a").body.decode()
        assert "visited 2 times" in second

        other = gemini_request(server.port, "gemini://localhost/b").body.decode()
        assert "This page (/b) has been visited 1 time.\n" in other
        assert "All pages together: 3 visits." in other
    finally:
        server.stop()

    restarted = start_process(command, tmp_path)
    try:
        again = gemini_request(restarted.port, "gemini://localhost/a").body.decode()
        assert "visited 3 times" in again
        assert "All pages together: 4 visits." in again
    finally:
        restarted.stop()
