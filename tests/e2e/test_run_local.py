"""scripts/run-local as a newcomer uses it: Ctrl-C lets the running job finish."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest
import trio

from tests.helpers import clean_env, read_until, tool

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_ctrl_c_stops_the_worker_after_its_job_then_the_server() -> None:
    listen = f"127.0.0.1:{_free_port()}"
    env = clean_env(AIRUNNER_LISTEN=listen)
    # In a session of its own, as in a terminal: Ctrl-C goes to its process group.
    run_local = await trio.lowlevel.open_process(
        ["bash", str(ROOT / "scripts" / "run-local")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        with trio.fail_after(180):  # the script installs airunner first
            await read_until(run_local.stderr, b"worker polling")
        # monitor finds the server through AIRUNNER_LISTEN, as the README says.
        submit = await trio.lowlevel.open_process(
            [tool("airunner-cli"), "submit", "--", "sh", "-c", "sleep 3; echo finished"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        await read_until(submit.stderr, b"process started")
        os.killpg(run_local.pid, signal.SIGINT)
        assert submit.stdout is not None
        with trio.fail_after(30):
            output = await read_until(submit.stdout, b"finished")
            assert await submit.wait() == 0, output
            assert await run_local.wait() == 0
    finally:
        if run_local.returncode is None:
            os.killpg(run_local.pid, signal.SIGKILL)
            await run_local.wait()
        # The server has a process group of its own.
        await trio.run_process(["pkill", "-f", f"--listen {listen}"], check=False)
