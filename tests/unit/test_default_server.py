"""Which server the CLI talks to when --server is not given."""

from __future__ import annotations

import pytest

from airunner.cli._common import default_server


@pytest.mark.parametrize(
    ("env", "server"),
    [
        ({}, "http://127.0.0.1:8080"),
        ({"AIRUNNER_LISTEN": "127.0.0.1:9090"}, "http://127.0.0.1:9090"),
        ({"AIRUNNER_LISTEN": "0.0.0.0:9090"}, "http://127.0.0.1:9090"),
        ({"AIRUNNER_LISTEN": "[::]:9090"}, "http://127.0.0.1:9090"),
        ({"AIRUNNER_LISTEN": "[::1]:9090"}, "http://[::1]:9090"),
        ({"AIRUNNER_LISTEN": "nonsense"}, "http://127.0.0.1:8080"),
        (
            {"AIRUNNER_SERVER": "https://ci.example:443", "AIRUNNER_LISTEN": "127.0.0.1:9090"},
            "https://ci.example:443",
        ),
    ],
)
def test_the_cli_finds_the_server_run_local_started(env: dict[str, str], server: str) -> None:
    assert default_server(env) == server
