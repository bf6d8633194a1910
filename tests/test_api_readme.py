"""The example under "Writing applications" in README.md runs as the README describes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from .certs import self_signed, server_credential
from .harness import ClientTLSOptions, connect_memory, make_memory_server

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Writing applications\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, "no python block under Writing applications"
    return match.group(1)


@pytest.fixture(scope="module")
def example_app() -> Any:
    namespace: dict[str, Any] = {"__name__": "readme_example"}
    exec(compile(readme_example(), "README.md", "exec"), namespace)
    return namespace["app"]


@pytest.fixture(scope="module")
def server_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    certfile, keyfile = server_credential().write(tmp_path_factory.mktemp("server"), "localhost")
    return {"certfile": str(certfile), "keyfile": str(keyfile)}


@pytest.mark.parametrize(
    "url, expected_header, expected_body",
    [
        ("gemini://localhost/", b"20 text/gemini", b"# Hello\n\n=> /greet Greet someone\n"),
        ("gemini://localhost/greet", b"10 Your name", b""),
        ("gemini://localhost/greet?Ada", b"20 text/plain", b"Hello, Ada!\n"),
        ("gemini://localhost/page/7", b"20 text/plain", b"Page 7\n"),
        ("gemini://localhost/whoami", b"60 Present a certificate", b""),
        ("gemini://localhost/missing", b"50 Not Found", b""),
    ],
)
def test_readme_example_routes(
    example_app: Any, server_files: dict[str, str], url: str, expected_header: bytes, expected_body: bytes
) -> None:
    server = make_memory_server(example_app, allow_transient_certs=True, **server_files)
    connection = connect_memory(server, url.encode() + b"\r\n")

    assert connection.client.header == expected_header
    assert connection.client.body == expected_body


def test_readme_example_whoami_with_certificate(example_app: Any, server_files: dict[str, str]) -> None:
    server = make_memory_server(example_app, allow_transient_certs=True, **server_files)
    connection = connect_memory(server, b"gemini://localhost/whoami\r\n", ClientTLSOptions(self_signed("ada")))

    assert connection.client.header == b"20 text/plain"
    assert connection.client.body.startswith(b"You are SHA256:")
