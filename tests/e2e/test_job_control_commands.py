"""get, cancel, retry, list and submit's job control, as a user runs them against
a real server (and, where the job must run, a real worker process)."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from airunner.api.job.v1.job_pb import JobState
from airunner.config import MemoryStoreSettings
from airunner.server import open_store
from tests.helpers import clean_env, read_until, tool

from .conftest import run_server
from .test_commands import server_process
from .test_jobs_run import Cli

pytestmark = pytest.mark.e2e

SECRET_VALUE = "never-print-this-value"


@pytest.fixture
async def cli(tmp_path: Path) -> AsyncIterator[Cli]:
    async with run_server(poll_window=5) as running:
        yield Cli(running, tmp_path / "work")


async def _ok(cli: Cli, *args: str) -> str:
    done = await cli.run(*args)
    assert done.returncode == 0, (args, done.stderr)
    assert SECRET_VALUE.encode() not in done.stdout + done.stderr
    return done.stdout.decode()


def _rows(text: str) -> dict[str, str]:
    """get's block as {name: value}."""
    rows = {}
    for line in text.splitlines():
        name, _, value = line.partition("  ")
        rows[name] = value.strip()
    return rows


@asynccontextmanager
async def _cli_process(cli: Cli, *args: str) -> AsyncIterator[trio.Process]:
    """A CLI command running in the background, its output piped."""
    split = args.index("--") if "--" in args else len(args)
    process = await trio.lowlevel.open_process(
        [tool("airunner-cli"), *args[:split], "--server", cli.server.url, *args[split:]],
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def test_get_cancel_retry_and_list_of_a_waiting_job(cli: Cli) -> None:
    job_id = (
        (
            await cli.run(
                "submit",
                "--detach",
                "--owner",
                "alice",
                "--secret",
                f"API_KEY={SECRET_VALUE}",
                "--",
                "sh",
                "-c",
                "echo $API_KEY",
            )
        )
        .stdout.decode()
        .strip()
    )
    shown = _rows(await _ok(cli, "get", job_id))
    assert shown["job"] == job_id
    assert shown["state"] == "scheduled"
    assert shown["queue"] == "default"
    assert shown["owner"] == "alice"
    assert shown["command"] == "sh -c 'echo $API_KEY'"
    assert shown["attempt"] == "0"
    assert shown["secrets"] == "API_KEY (values not shown)"
    as_json = json.loads(await _ok(cli, "get", job_id, "--json"))
    assert as_json["jobId"] == job_id
    assert as_json["secretNames"] == ["API_KEY"]
    listed = await _ok(cli, "list", "--json")
    assert json.loads(listed)["secretNames"] == ["API_KEY"]

    assert await _ok(cli, "cancel", job_id, "--reason", "not today") == f"job {job_id} cancelled\n"
    shown = _rows(await _ok(cli, "get", job_id))
    assert shown["state"] == "cancelled"
    assert shown["cancelled"] == "yes: not today"
    # Asked again, it says the job has ended, and stays as the first cancel left it.
    again = await cli.run("cancel", job_id)
    assert again.returncode == 1
    assert f"job {job_id} has already ended: cancelled" in again.stderr.decode()
    assert _rows(await _ok(cli, "get", job_id))["cancelled"] == "yes: not today"

    retried = await cli.run("retry", job_id)
    assert retried.returncode == 0, retried.stderr
    new_id = retried.stdout.decode().strip()
    assert f"`airunner-cli monitor {new_id}` follows it" in retried.stderr.decode()
    shown = _rows(await _ok(cli, "get", new_id))
    assert shown["state"] == "scheduled"
    assert shown["retry of"] == job_id
    assert shown["secrets"] == "API_KEY (values not shown)"

    table = (await _ok(cli, "list")).splitlines()
    assert table[0].split() == [
        "ID", "QUEUE", "STATE", "ATTEMPT", "WORKER", "EXIT", "DURATION", "AGE", "COMMAND"
    ]  # fmt: skip
    assert [row.split()[:3] for row in table[1:]] == [
        [new_id, "default", "scheduled"],
        [job_id, "default", "cancelled"],
    ]
    cancelled = (await _ok(cli, "list", "--state", "CANCELLED")).splitlines()[1:]
    assert [row.split()[0] for row in cancelled] == [job_id]
    assert (await _ok(cli, "list", "--owner", "bob")).splitlines()[1:] == []
    assert len((await _ok(cli, "list", "--owner", "alice")).splitlines()) == 3

    missing = await cli.run("get", "no-such-job")
    assert missing.returncode == 1
    assert b"no job no-such-job on" in missing.stderr


async def test_submit_says_it_waits_then_ctrl_c_leaves_the_job_running(cli: Cli) -> None:
    script = "echo started; sleep 2; echo finished"
    async with _cli_process(cli, "submit", "--", "sh", "-c", script) as submit:
        told = await read_until(submit.stderr, b"waiting for a worker on queue default")
        job_id = told.decode().split("job ", 1)[1].split()[0]
        async with cli.worker():
            await read_until(submit.stdout, b"started")
            submit.send_signal(signal.SIGINT)
            with trio.fail_after(10):
                assert await submit.wait() == 130
            assert submit.stderr is not None
            said = told + await submit.stderr.receive_some()
            assert b"SIGINT: stopped following job" in said
            assert f"`airunner-cli cancel {job_id}` cancels it".encode() in said
            assert said.count(b"waiting for a worker") == 1
            # The job went on: following it again sees it to its end.
            done = await cli.run("monitor", job_id)
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith(b"finished\n")
    late = await cli.run("cancel", job_id)
    assert late.returncode == 1
    [line] = late.stderr.decode().splitlines()
    assert line.startswith(f"airunner-cli: error: job {job_id} has already ended: completed")


async def test_cancel_on_interrupt_cancels_a_waiting_job(cli: Cli) -> None:
    async with _cli_process(cli, "submit", "--cancel-on-interrupt", "--", "true") as submit:
        told = await read_until(submit.stderr, b"waiting for a worker")
        job_id = told.decode().split("job ", 1)[1].split()[0]
        submit.send_signal(signal.SIGINT)
        with trio.fail_after(10):
            assert await submit.wait() == 130
        assert submit.stderr is not None
        assert f"SIGINT: job {job_id} cancelled".encode() in await submit.stderr.receive_some()
    job = await cli.server.store.get_job(job_id)
    assert job.state == JobState.CANCELLED
    assert job.cancel_reason == "SIGINT to airunner-cli submit"


async def test_a_cancelled_job_exits_125_and_a_timed_out_one_124(cli: Cli) -> None:
    async with _cli_process(cli, "submit", "--", "true") as submit:
        told = await read_until(submit.stderr, b"waiting for a worker")
        job_id = told.decode().split("job ", 1)[1].split()[0]
        await _ok(cli, "cancel", job_id)
        with trio.fail_after(10):
            assert await submit.wait() == 125
        assert submit.stderr is not None
        assert b"job cancelled (exit status 125)" in await submit.stderr.receive_some()
    # A real worker stops the job at its timeout and says so.
    async with cli.worker():
        done = await cli.run("submit", "--timeout", "1", "--", "sleep", "30")
    assert done.returncode == 124, done.stderr
    assert b"job timed out (exit status 124)" in done.stderr


async def test_https_against_a_plain_http_server_says_to_use_http(cli: Cli) -> None:
    plain = cli.server.url
    https = plain.replace("http://", "https://")
    for extra in ([], ["--no-verify"]):
        done = await trio.run_process(
            [tool("airunner-cli"), "list", "--server", https, *extra],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=clean_env(),
        )
        assert done.returncode == 1
        [line] = done.stderr.decode().splitlines()
        assert line == (
            f"airunner-cli: error: the server at {https} does not speak TLS on that port "
            f"(it answered in plain HTTP): use {plain}"
        )


async def test_monitor_notices_a_killed_server_within_seconds() -> None:
    async with server_process("--no-auth") as server:
        submitted = await trio.run_process(
            [tool("airunner-cli"), "submit", "--server", server.url, "--detach", "--", "true"],
            capture_stdout=True,
            env=clean_env(),
        )
        job_id = submitted.stdout.decode().strip()
        monitor = await trio.lowlevel.open_process(
            [tool("airunner-cli"), "monitor", job_id, "--server", server.url],
            env=clean_env(),
            stderr=subprocess.PIPE,
        )
        try:
            await read_until(monitor.stderr, b"waiting for a worker")
            server.process.kill()
            began = trio.current_time()
            with trio.fail_after(15):
                assert await monitor.wait() == 1
            took = trio.current_time() - began
        finally:
            if monitor.returncode is None:
                monitor.kill()
            await monitor.wait()
        assert monitor.stderr is not None
        said = b""
        while chunk := await monitor.stderr.receive_some():
            said += chunk
    assert 4 < took < 10
    assert b"gave up after 5 s of retries" in said
    assert f"airunner-cli monitor {job_id} --from-sequence 0".encode() in said


async def test_monitor_rides_out_a_server_restart(tmp_path: Path) -> None:
    async with open_store(MemoryStoreSettings(token_signing_secret=b"e2e-secret")) as store:
        async with run_server(store=store) as first:
            cli = Cli(first, tmp_path / "work")
            job_id = (await _ok(cli, "submit", "--detach", "--", "echo", "back")).strip()
            monitor = await trio.lowlevel.open_process(
                [tool("airunner-cli"), "monitor", job_id, "--server", first.url],
                env=clean_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            await read_until(monitor.stderr, b"waiting for a worker")
        try:
            # The first server has stopped, its stream broken; the same store
            # comes back on the same address.
            listen = first.url.removeprefix("http://")
            async with (
                run_server(store=store, listen=listen) as second,
                Cli(second, tmp_path / "work").worker(),
            ):
                with trio.fail_after(30):
                    assert await monitor.wait() == 0
        finally:
            if monitor.returncode is None:
                monitor.kill()
            await monitor.wait()
    assert monitor.stdout is not None
    assert await monitor.stdout.receive_some() == b"back\n"
