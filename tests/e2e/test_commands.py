"""The installed commands, run as a user runs them: configuration errors, signals, tokens."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import jwt
import pytest
import trio

from airunner.api.job.v1.job_pb import ListJobsRequest
from airunner.http import BearerAuth, load_public_key
from tests.helpers import clean_env, read_until, tool

from .conftest import Clients, KeyPair, run_server


def run_command(args: list[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(
    ("env", "args", "message"),
    [
        ({"AIRUNNER_STORE_TYPE": "redis"}, ["--no-auth"], "unknown store type: redis"),
        (
            {"AIRUNNER_STORE_TYPE": "sqs"},
            ["--no-auth"],
            "failed to create SQS store: AIRUNNER_SQS_QUEUE_DEFAULT is required",
        ),
        (
            {"AIRUNNER_STORE_TYPE": "sqs", "AIRUNNER_SQS_QUEUE_DEFAULT": "http://127.0.0.1:1/q"},
            ["--no-auth"],
            "failed to create SQS store: AIRUNNER_DYNAMODB_JOBS_TABLE is required",
        ),
        (
            {
                "AIRUNNER_STORE_TYPE": "sqs",
                "AIRUNNER_SQS_QUEUE_DEFAULT": "http://127.0.0.1:1/q",
                "AIRUNNER_DYNAMODB_JOBS_TABLE": "airunner_jobs",
            },
            ["--no-auth"],
            "failed to create SQS store: AIRUNNER_TOKEN_SIGNING_SECRET is required",
        ),
        (
            {
                "AIRUNNER_STORE_TYPE": "sqs",
                "AIRUNNER_SQS_QUEUE_DEFAULT": "http://127.0.0.1:1/q",
                "AIRUNNER_DYNAMODB_JOBS_TABLE": "airunner_jobs",
                "AIRUNNER_TOKEN_SIGNING_SECRET": "s",
                "AIRUNNER_DEFAULT_VISIBILITY_TIMEOUT": "1e3",
            },
            ["--no-auth"],
            "failed to create SQS store: AIRUNNER_DEFAULT_VISIBILITY_TIMEOUT must be a whole",
        ),
        (
            {"AIRUNNER_DEFAULT_VISIBILITY_TIMEOUT": "soon"},
            ["--no-auth"],
            "AIRUNNER_DEFAULT_VISIBILITY_TIMEOUT must be a whole number, got 'soon'",
        ),
        ({}, [], "JWT_PUBLIC_KEY is required"),
        ({"JWT_PUBLIC_KEY": "nonsense"}, [], "JWT_PUBLIC_KEY is not a PEM public key"),
        ({}, ["--no-auth", "--listen", "8080"], "listen address must be HOST:PORT"),
        ({"AIRUNNER_LISTEN": "nowhere"}, ["--no-auth"], "listen address must be HOST:PORT"),
    ],
)
def test_configuration_errors_are_one_line(
    env: dict[str, str], args: list[str], message: str
) -> None:
    done = run_command([tool("airunner-server"), "rpc-server", *args], clean_env(**env))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("airunner-server: error: ")
    assert message in lines[0]


# A server process that gets as far as listening on 127.0.0.1 (the configuration
# errors above end before that, and belong to the fast part).
@pytest.mark.e2e
def test_port_in_use_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_command(
            [tool("airunner-server"), "rpc-server", "--no-auth", "--listen", f"127.0.0.1:{port}"],
            clean_env(),
        )
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"airunner-server: error: cannot listen on 127.0.0.1:{port}")
    assert "Traceback" not in done.stderr


@dataclass
class ServerProcess:
    process: trio.Process
    url: str = ""
    # Its log lines (one JSON object each, stderr being a pipe) and their messages.
    lines: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)


def _message(line: str) -> str:
    """The message of a JSON log line; any other line as it is."""
    try:
        entry = json.loads(line)
    except ValueError:
        return line
    return str(entry["message"]) if isinstance(entry, dict) else line


@asynccontextmanager
async def server_process(*args: str, **env: str) -> AsyncIterator[ServerProcess]:
    process = await trio.lowlevel.open_process(
        [tool("airunner-server"), "rpc-server", "--listen", "127.0.0.1:0", *args],
        env=clean_env(**env),
        stderr=subprocess.PIPE,
    )
    running = ServerProcess(process)
    assert process.stderr is not None
    stderr = process.stderr

    async def read_log(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        pending = b""
        started = False
        while chunk := await stderr.receive_some():
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                running.lines.append(line.decode())
                running.log.append(_message(line.decode()))
                if not started and (
                    found := re.search(r"serving on (http://\S+)", running.log[-1])
                ):
                    running.url = found.group(1)
                    started = True
                    task_status.started()
        if not started:
            raise AssertionError("server exited before serving:\n" + "\n".join(running.log))

    try:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(30):
                await nursery.start(read_log)
            try:
                yield running
            finally:
                # The log reader ends when the process does.
                if process.returncode is None:
                    process.send_signal(signal.SIGTERM)
                    with trio.move_on_after(20):
                        await process.wait()
                if process.returncode is None:
                    process.kill()
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


@pytest.mark.e2e
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_server_serves_until_a_signal_then_exits_zero(signum: signal.Signals) -> None:
    async with server_process("--no-auth", "--grace-period", "20") as server:
        clients = Clients(server.url)
        await clients.call(clients.jobs.list_jobs, ListJobsRequest())
        clients.close()
        began = trio.current_time()
        server.process.send_signal(signum)
        with trio.fail_after(20):
            assert await server.process.wait() == 0
        # Nothing was in flight, so nothing waited for the grace period.
        assert trio.current_time() - began < 10
    assert any(line.endswith("Using in-memory job store") for line in server.log)
    assert any(f"{signum.name}: draining" in line for line in server.log)


@pytest.mark.e2e
async def test_server_logs_one_json_object_per_line_when_not_on_a_terminal() -> None:
    async with server_process("--no-auth") as server:
        pass
    entries = [json.loads(line) for line in server.lines if line]
    assert entries, "no log lines"
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= entry.keys()
    assert any(e["message"] == "Using in-memory job store" for e in entries)


@pytest.mark.e2e
async def test_server_logs_text_when_told() -> None:
    async with server_process("--no-auth", "--log-format", "text") as server:
        pass
    assert any(
        re.fullmatch(r"\S+ \S+ INFO airunner\.server: Using in-memory job store", line)
        for line in server.lines
    ), server.lines


@pytest.mark.e2e
async def test_cli_token_is_accepted_by_a_server(key_pair: KeyPair) -> None:
    done = run_command(
        [tool("airunner-cli"), "token", "--subject", "alice", "--ttl", "5m"],
        clean_env(JWT_SIGNING_KEY=key_pair.private_pem),
    )
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    claims = jwt.decode(token, key_pair.private.public_key(), algorithms=["ES256"])
    assert claims["sub"] == "alice"
    assert claims["iss"] == "airunner"
    assert claims["exp"] - claims["iat"] == 300
    auth = BearerAuth(load_public_key(key_pair.public_pem))
    async with run_server(auth=auth) as running:
        clients = Clients(running.url, token=token)
        await clients.call(clients.jobs.list_jobs, ListJobsRequest())
        clients.close()


@pytest.mark.parametrize(
    ("env", "args", "message"),
    [
        ({}, ["--subject", "a"], "JWT_SIGNING_KEY is required"),
        ({"JWT_SIGNING_KEY": "nope"}, ["--subject", "a"], "not an unencrypted PEM private key"),
        (
            {"JWT_SIGNING_KEY": "KEY"},
            ["--subject", "a", "--ttl", "soon"],
            "duration must look like",
        ),
        ({"JWT_SIGNING_KEY": "KEY"}, ["--subject", " "], "--subject must not be empty"),
    ],
)
def test_cli_token_errors(
    key_pair: KeyPair, env: dict[str, str], args: list[str], message: str
) -> None:
    env = {k: key_pair.private_pem if v == "KEY" else v for k, v in env.items()}
    done = run_command([tool("airunner-cli"), "token", *args], clean_env(**env))
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("airunner-cli: error: ")
    assert message in line


async def test_cli_reports_a_server_that_is_down() -> None:
    done = await trio.run_process(
        [tool("airunner-cli"), "submit", "--server", "http://127.0.0.1:9", "--", "true"],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=clean_env(),
    )
    assert done.returncode == 1
    [line] = done.stderr.decode().strip().splitlines()
    assert line.startswith("airunner-cli: error: cannot reach the server at http://127.0.0.1:9")


_TOKEN_FILE_ERRORS = [
    (["--token-file", "/no/such/file"], {}, "cannot read the token file /no/such/file"),
    (["--token-file", "EMPTY"], {}, "the token file EMPTY is empty"),
    (["--token", "t", "--token-file", "EMPTY"], {}, "pass --token or --token-file, not both"),
    ([], {"AIRUNNER_TOKEN_FILE": "/no/such/file"}, "cannot read the token file"),
    (
        [],
        {"AIRUNNER_TOKEN": "t", "AIRUNNER_TOKEN_FILE": "EMPTY"},
        "AIRUNNER_TOKEN and AIRUNNER_TOKEN_FILE are both set",
    ),
]
_NOT_ROOT = "--job-user needs the worker to run as root"
_JOB_USER_ERRORS = [
    (
        ["--job-user", "no-such-user-here"],
        {},
        "no user named 'no-such-user-here'" if os.geteuid() == 0 else _NOT_ROOT,
    ),
    (
        ["--job-user", "root"],
        {},
        "--job-user must not be root" if os.geteuid() == 0 else _NOT_ROOT,
    ),
]


@pytest.mark.parametrize(
    ("command", "args", "env", "message"),
    [
        *[(command, *case) for command in ("worker", "list") for case in _TOKEN_FILE_ERRORS],
        # --job-user is the worker's alone.
        *[("worker", *case) for case in _JOB_USER_ERRORS],
    ],
)
def test_token_file_and_job_user_errors_are_one_line(
    tmp_path: Path, command: str, args: list[str], env: dict[str, str], message: str
) -> None:
    empty = tmp_path / "empty"
    empty.touch()

    def fill(text: str) -> str:
        return text.replace("EMPTY", str(empty))

    extra = ["--work-dir", str(tmp_path / "work")] if command == "worker" else []
    done = run_command(
        [
            tool("airunner-cli"),
            command,
            "--server",
            "http://127.0.0.1:9",
            *extra,
            *map(fill, args),
        ],
        clean_env(**{k: fill(v) for k, v in env.items()}),
    )
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("airunner-cli: error: ")
    assert fill(message) in line


@pytest.mark.e2e
async def test_a_token_file_is_read_by_the_cli(key_pair: KeyPair, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(key_pair.token() + "\n")
    auth = BearerAuth(load_public_key(key_pair.public_pem))
    async with run_server(auth=auth) as running:
        for args, env in [
            (["--token-file", str(token_file)], {}),
            ([], {"AIRUNNER_TOKEN_FILE": str(token_file)}),
            ([], {}),
        ]:
            done = await trio.run_process(
                [tool("airunner-cli"), "list", "--server", running.url, *args],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env=clean_env(**env),
            )
            expected = 0 if args or env else 1
            assert done.returncode == expected, (args, env, done.stderr)


@pytest.mark.e2e
@pytest.mark.skipif(os.geteuid() != 0, reason="a worker warns only when it runs as root")
async def test_a_root_worker_without_a_job_user_says_jobs_run_as_root(tmp_path: Path) -> None:
    process = await trio.lowlevel.open_process(
        [
            tool("airunner-cli"),
            "worker",
            "--server",
            "http://127.0.0.1:9",
            "--work-dir",
            str(tmp_path),
            "--log-format",
            "text",
        ],
        env=clean_env(),
        stderr=subprocess.PIPE,
    )
    try:
        logged = await read_until(process.stderr, b"worker polling")
    finally:
        process.kill()
        await process.wait()
    assert b"jobs run as root: they can read the worker's token" in logged


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--queue", "nope"], "invalid_argument: unknown queue 'nope'"),
        (["--queue", "default", "--queue", "nope"], "invalid_argument: unknown queue 'nope'"),
        (["--token", "not-a-token"], "unauthenticated: invalid bearer token"),
    ],
)
async def test_a_worker_that_can_never_take_a_job_says_why_and_exits(
    key_pair: KeyPair, tmp_path: Path, args: list[str], message: str
) -> None:
    auth = BearerAuth(load_public_key(key_pair.public_pem))
    async with run_server(auth=auth) as running:
        if "--token" not in args:
            args = [*args, "--token", key_pair.token()]
        with trio.fail_after(20):
            done = await trio.run_process(
                [
                    tool("airunner-cli"),
                    "worker",
                    "--server",
                    running.url,
                    "--work-dir",
                    str(tmp_path),
                    *args,
                ],
                capture_stderr=True,
                check=False,
                env=clean_env(),
            )
    assert done.returncode == 1
    last = done.stderr.decode().strip().splitlines()[-1]
    assert last.startswith(f"airunner-cli: error: the server at {running.url} refused")
    assert message in last
