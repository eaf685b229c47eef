"""Which server the CLI talks to when --server is not given."""

from __future__ import annotations

import pytest

from airunner.cli._common import client_options, default_server


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


@pytest.mark.parametrize(
    ("env", "args", "servers"),
    [
        ({}, [], ["http://127.0.0.1:8080"]),
        ({"AIRUNNER_SERVER": "http://a:1, http://b:2"}, [], ["http://a:1", "http://b:2"]),
        ({"AIRUNNER_SERVER": "http://a:1"}, ["--server", "http://c:3"], ["http://c:3"]),
        (
            {},
            ["--server", "http://a:1", "--server", "http://b:2,http://c:3"],
            ["http://a:1", "http://b:2", "http://c:3"],
        ),
    ],
)
def test_server_may_be_given_more_than_once(
    env: dict[str, str], args: list[str], servers: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AIRUNNER_SERVER", "AIRUNNER_LISTEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert client_options().parse_args(args).server == servers
