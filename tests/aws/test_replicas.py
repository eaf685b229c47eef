"""A worker whose replica dies: on moto, with sqs-mode servers as real processes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from tests.e2e.test_commands import server_process
from tests.helpers import clean_env, eventually, process_ended, tool

from .test_sqs_mode import cli

pytestmark = [pytest.mark.aws, pytest.mark.e2e]

# A job printing numbered lines for about ten seconds.
LINES = 100
NUMBERED = (
    f"import time\nfor i in range({LINES}):\n    print(i, flush=True)\n    time.sleep(0.1)\n"
)
EXPECTED = "".join(f"{i}\n" for i in range(LINES)).encode()


class Worker:
    """A worker process and what it has logged so far."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.log = ""
        self._logged = trio.Event()

    async def read_log(self) -> None:
        assert self.process.stderr is not None
        async for chunk in self.process.stderr:
            self.log += chunk.decode(errors="replace")
            self._logged.set()
            self._logged = trio.Event()

    async def logged(self, text: str) -> None:
        """Wait until the worker has logged ``text``."""
        while text not in self.log:
            await self._logged.wait()


@asynccontextmanager
async def worker_process(
    work_dir: Path, *servers: str, visibility_timeout: int = 30
) -> AsyncIterator[Worker]:
    """``airunner-cli worker`` given ``servers``."""
    args = [arg for url in servers for arg in ("--server", url)]
    process = await trio.lowlevel.open_process(
        [
            tool("airunner-cli"),
            "worker",
            *args,
            "--work-dir",
            str(work_dir),
            "--visibility-timeout",
            str(visibility_timeout),
        ],
        env=clean_env(),
        stderr=subprocess.PIPE,
    )
    worker = Worker(process)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.read_log)
            yield worker
            process.kill()
    finally:
        process.kill()
        await process.wait()
        # Shown when the test fails.
        print(worker.log)


async def follow(job_id: str, *servers: str) -> trio.Process:
    args = [arg for url in servers for arg in ("--server", url)]
    return await trio.lowlevel.open_process(
        [tool("airunner-cli"), "monitor", job_id, *args],
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


async def read_all(stream: trio.abc.ReceiveStream | None) -> bytes:
    assert stream is not None
    seen = b""
    while chunk := await stream.receive_some():
        seen += chunk
    return seen


async def submit(url: str, *command: str) -> str:
    submitted = await cli(url, "submit", "--detach", "--", *command)
    assert submitted.returncode == 0, submitted.stderr
    return submitted.stdout.decode().split()[-1]


async def test_a_worker_given_two_replicas_loses_nothing_when_its_replica_dies(
    sqs_env: dict[str, str], tmp_path: Path
) -> None:
    async with (
        server_process("--no-auth", **sqs_env) as first,
        server_process("--no-auth", **sqs_env) as second,
        worker_process(tmp_path, first.url, second.url) as worker,
    ):
        job_id = await submit(second.url, sys.executable, "-c", NUMBERED)
        monitor = await follow(job_id, second.url)
        # Another follows on the dying replica, then on the other.
        moving = await follow(job_id, first.url, second.url)
        assert monitor.stdout is not None
        seen = b""
        with trio.fail_after(120):
            # A few seconds in, the replica the worker talks to dies.
            while b"\n30\n" not in seen:
                seen += await monitor.stdout.receive_some()
            first.process.kill()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(monitor.wait)
                nursery.start_soon(moving.wait)
                seen += await read_all(monitor.stdout)
                errors = await read_all(monitor.stderr)
                moved = await read_all(moving.stdout)
        assert monitor.returncode == 0, errors
        assert moving.returncode == 0
        assert moved == EXPECTED
        # Every line once, in order, live and in the replay, from one run.
        assert seen == EXPECTED
        assert errors.count(b"process started") == 1
        assert b"attempt" not in errors
        replay = await cli(second.url, "monitor", job_id)
        assert replay.returncode == 0
        assert replay.stdout == EXPECTED
        assert f"cannot reach the server at {first.url}" in worker.log


async def test_a_delivery_that_expires_while_its_only_replica_is_down_runs_again(
    sqs_env: dict[str, str], tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    # Each run notes its pid; the first prints lines for 30 s, the second for 2.
    script = (
        "import os, time\n"
        f"with open({str(pids)!r}, 'a') as f: f.write(f'{{os.getpid()}}\\n')\n"
        f"runs = len(open({str(pids)!r}).read().split())\n"
        "for i in range(300 if runs == 1 else 20):\n"
        "    print(i, flush=True)\n"
        "    time.sleep(0.1)\n"
    )
    async with server_process("--no-auth", **sqs_env) as replica:
        listen = replica.url.removeprefix("http://")
        async with worker_process(tmp_path, replica.url, visibility_timeout=3) as worker:
            job_id = await submit(replica.url, sys.executable, "-c", script)
            monitor = await follow(job_id, replica.url)
            assert monitor.stdout is not None
            seen = b""
            with trio.fail_after(120):
                while b"\n10\n" not in seen:
                    seen += await monitor.stdout.receive_some()
                monitor.kill()
                await monitor.wait()
                replica.process.kill()
                await replica.process.wait()
                # The worker stops the process once no heartbeat was accepted
                # within the visibility timeout.
                await worker.logged("no heartbeat accepted")
            # Stopped, not left to print on for the half minute it has left.
            first_pid = int(pids.read_text().split()[0])
            await eventually(lambda: process_ended(first_pid))
            async with server_process("--no-auth", "--listen", listen, **sqs_env) as restarted:
                with trio.fail_after(120):
                    replay = await cli(restarted.url, "monitor", job_id)
    assert replay.returncode == 0, replay.stderr
    errors = replay.stderr.decode()
    assert "attempt 2 of the job:" in errors
    assert "lost its worker" in errors
    assert errors.count("process started") == 2
    # The first run's lines up to where the worker lost its server, then the
    # second run's, all of them.
    second = "".join(f"{i}\n" for i in range(20)).encode()
    first = replay.stdout.removesuffix(second)
    assert first != replay.stdout
    assert first == "".join(f"{i}\n" for i in range(first.count(b"\n"))).encode()
    assert first.count(b"\n") > 10
    assert len(pids.read_text().split()) == 2
