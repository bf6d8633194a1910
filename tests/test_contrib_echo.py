"""contrib/echo.py, started as a process; the page shows the request and its environ."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .certs import self_signed
from .harness import RunningServer, gemini_request, start_process

EXAMPLE = Path(__file__).resolve().parent.parent / "contrib" / "echo.py"


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("echo")


@pytest.fixture(scope="module")
def echo(work_dir: Path) -> Iterator[RunningServer]:
    server = start_process([sys.executable, str(EXAMPLE), "--port", "0", "--allow-transient-certs"], work_dir)
    yield server
    server.stop()


def test_echo_shows_parsed_url_and_environ(echo: RunningServer) -> None:
    response = gemini_request(echo.port, f"gemini://LocalHost:{echo.port}/some/path?a%20query")
    body = response.body.decode()

    assert response.header == "20 text/gemini"
    assert "hostname: 'localhost'\n" in body
    assert f"port: {echo.port}\n" in body
    assert "path: '/some/path'\n" in body
    assert "query: 'a query'\n" in body
    assert "QUERY_STRING: 'a%20query'\n" in body
    assert "REMOTE_ADDR: '127.0.0.1'\n" in body
    assert "client_certificate: None\n" in body
    assert "TLS_CLIENT_HASH" not in body


def test_echo_shows_client_certificate(echo: RunningServer, work_dir: Path) -> None:
    credential = self_signed("erin")
    certfile, keyfile = credential.write(work_dir, "erin")

    body = gemini_request(echo.port, "gemini://localhost/", certfile=certfile, keyfile=keyfile).body.decode()

    assert "REMOTE_USER: 'erin'\n" in body
    assert "TLS_CLIENT_AUTHORISED: 0\n" in body
    assert "TLS_CLIENT_HASH: 'SHA256:" in body
    assert "client_certificate: <certificate for CN=erin>\n" in body


def test_echo_answers_other_hosts(echo: RunningServer) -> None:
    response = gemini_request(echo.port, "gemini://example.org/")

    assert response.status == 20
    assert "hostname: 'example.org'\n" in response.body.decode()
