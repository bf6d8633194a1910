"""contrib/pagination.py, started as a process; named groups pick the page."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import RunningServer, gemini_request, start_process

EXAMPLE = Path(__file__).resolve().parent.parent / "contrib" / "pagination.py"


@pytest.fixture(scope="module")
def pagination(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    work_dir = tmp_path_factory.mktemp("pagination")
    command = [sys.executable, str(EXAMPLE), "--port", "0", "--items", "95", "--per-page", "10"]
    server = start_process(command, work_dir)
    yield server
    server.stop()


def test_pagination_root_redirects_to_first_page(pagination: RunningServer) -> None:
    response = gemini_request(pagination.port, "gemini://localhost/")
    assert (response.status, response.meta) == (30, "/page/1")


def test_pagination_middle_page(pagination: RunningServer) -> None:
    body = gemini_request(pagination.port, "gemini://localhost/page/3").body.decode()

    assert body.startswith("# Items, page 3 of 10\n")
    assert "=> /item/21 Item 21\n" in body
    assert "=> /item/30 Item 30\n" in body
    assert "Item 31" not in body
    assert "=> /page/2 Previous page\n" in body
    assert "=> /page/4 Next page\n" in body


def test_pagination_last_page_is_short(pagination: RunningServer) -> None:
    body = gemini_request(pagination.port, "gemini://localhost/page/10").body.decode()

    assert "=> /item/95 Item 95\n" in body
    assert body.count("=> /item/") == 5
    assert "Next page" not in body


def test_pagination_item_links_back_to_its_page(pagination: RunningServer) -> None:
    body = gemini_request(pagination.port, "gemini://localhost/item/42").body.decode()
    assert body == "# Item 42\n\n=> /page/5 Back to page 5\n"


@pytest.mark.parametrize(
    "path, expected_status",
    [("/page/0", 51), ("/page/11", 51), ("/item/96", 51), ("/page/abc", 50), ("/page/", 50)],
)
def test_pagination_out_of_range(pagination: RunningServer, path: str, expected_status: int) -> None:
    assert gemini_request(pagination.port, f"gemini://localhost{path}").status == expected_status
