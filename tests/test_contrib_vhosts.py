"""contrib/vhosts.py, started as a process; the URL's host picks the site."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import RunningServer, gemini_request, start_process

EXAMPLE = Path(__file__).resolve().parent.parent / "contrib" / "vhosts.py"


@pytest.fixture(scope="module")
def vhosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    work_dir = tmp_path_factory.mktemp("vhosts")
    for name in ("apple", "banana"):
        (work_dir / name).mkdir()
        (work_dir / name / "index.gmi").write_text(f"# The {name} site\n")

    command = [
        sys.executable, str(EXAMPLE), "--port", "0", "--hostname", "localhost",
        "--vhost", f"apple.localhost={work_dir / 'apple'}",
        "--vhost", f"Banana.Localhost={work_dir / 'banana'}",
    ]
    server = start_process(command, work_dir)
    yield server
    server.stop()


@pytest.mark.parametrize(
    "url, expected_header, expected_body",
    [
        ("gemini://apple.localhost/", "20 text/gemini", "# The apple site\n"),
        ("gemini://banana.localhost/", "20 text/gemini", "# The banana site\n"),
        ("gemini://APPLE.localhost/index.gmi", "20 text/gemini", "# The apple site\n"),
        ("gemini://apple.localhost/missing.gmi", "51 Not Found", ""),
        ("gemini://cherry.localhost/", "53 Proxy request refused", ""),
    ],
)
def test_vhosts_route_by_host(vhosts: RunningServer, url: str, expected_header: str, expected_body: str) -> None:
    server_name = url.split("/")[2].lower()
    response = gemini_request(vhosts.port, url, server_name=server_name)

    assert response.header == expected_header
    assert response.body.decode() == expected_body


def test_vhosts_directory_page_lists_sites(vhosts: RunningServer) -> None:
    body = gemini_request(vhosts.port, "gemini://localhost/").body.decode()

    assert f"=> gemini://apple.localhost:{vhosts.port}/ apple.localhost\n" in body
    assert f"=> gemini://banana.localhost:{vhosts.port}/ banana.localhost\n" in body


def test_vhosts_without_sni(vhosts: RunningServer) -> None:
    response = gemini_request(vhosts.port, "gemini://apple.localhost/", server_name=None)
    assert response.body.decode() == "# The apple site\n"
