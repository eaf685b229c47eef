"""airunner-server in sqs mode on moto's server: startup checks, and real jobs end to end."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from tests.e2e.test_commands import server_process
from tests.helpers import clean_env, tool

pytestmark = [pytest.mark.aws, pytest.mark.e2e]


def test_missing_table_is_one_line(sqs_env: dict[str, str]) -> None:
    env = sqs_env | {"AIRUNNER_DYNAMODB_JOBS_TABLE": "no-such-table"}
    done = subprocess.run(
        [tool("airunner-server"), "rpc-server", "--no-auth", "--listen", "127.0.0.1:0"],
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("airunner-server: error: failed to create SQS store:")
    assert "Traceback" not in done.stderr


def test_a_missing_extra_queue_is_one_line_naming_it(sqs_env: dict[str, str]) -> None:
    # A queue URL of the right shape whose queue was never made.
    missing = sqs_env["AIRUNNER_SQS_QUEUE_DEFAULT"].rsplit("/", 1)[0] + "/airunner-gone-nightly"
    env = sqs_env | {"AIRUNNER_SQS_QUEUE_NIGHTLY": missing}
    done = subprocess.run(
        [tool("airunner-server"), "rpc-server", "--no-auth", "--listen", "127.0.0.1:0"],
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"airunner-server: error: failed to create SQS store: queue nightly ({missing}):"
    )
    assert "Traceback" not in done.stderr


@pytest.fixture
async def sqs_server(sqs_env: dict[str, str]) -> AsyncIterator[str]:
    async with server_process("--no-auth", **sqs_env) as server:
        assert any(line.endswith("Using SQS/DynamoDB job store") for line in server.log)
        yield server.url


async def cli(url: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    split = args.index("--") if "--" in args else len(args)
    return await trio.run_process(
        [tool("airunner-cli"), *args[:split], "--server", url, *args[split:]],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=clean_env(),
    )


async def test_jobs_run_end_to_end_in_sqs_mode(sqs_server: str, tmp_path: Path) -> None:
    worker = await trio.lowlevel.open_process(
        [tool("airunner-cli"), "worker", "--server", sqs_server, "--work-dir", str(tmp_path)],
        env=clean_env(),
        stderr=subprocess.DEVNULL,
    )
    try:
        done = await cli(sqs_server, "submit", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
        assert done.returncode == 3, done.stderr
        assert done.stdout == b"out\n"
        assert b"err\n" in done.stderr

        program = (
            "import sys\nfor i in range(2048): sys.stdout.buffer.write(bytes([i % 256]) * 1024)\n"
        )
        live = await cli(sqs_server, "submit", "--", sys.executable, "-c", program)
        assert live.returncode == 0, live.stderr[-2000:]
        assert len(live.stdout) == 2048 * 1024
        job_id = live.stderr.split(b"job ", 1)[1].split(b" ", 1)[0].decode()
        replay = await cli(sqs_server, "monitor", job_id)
        assert replay.returncode == 0
        assert hashlib.sha256(replay.stdout).digest() == hashlib.sha256(live.stdout).digest()

        listed = await cli(sqs_server, "list", "--queue", "default", "--json")
        assert listed.returncode == 0
        assert len(listed.stdout.strip().splitlines()) == 2
    finally:
        worker.kill()
        await worker.wait()


async def test_a_subscriber_on_another_replica_sees_output_while_the_job_runs(
    sqs_env: dict[str, str], tmp_path: Path
) -> None:
    """Two replicas on one backend, as a load balancer would spread clients: the
    worker on one, `monitor` on the other shows each line before the job ends."""
    flag = tmp_path / "go-on"
    script = f"echo ready; while [ ! -e {flag} ]; do sleep 0.05; done; echo done"
    async with (
        server_process("--no-auth", **sqs_env) as runner,
        server_process("--no-auth", **sqs_env) as watcher,
    ):
        worker = await trio.lowlevel.open_process(
            [tool("airunner-cli"), "worker", "--server", runner.url, "--work-dir", str(tmp_path)],
            env=clean_env(),
            stderr=subprocess.DEVNULL,
        )
        try:
            submitted = await cli(runner.url, "submit", "--detach", "--", "sh", "-c", script)
            assert submitted.returncode == 0, submitted.stderr
            job_id = submitted.stdout.decode().split()[-1]
            monitor = await trio.lowlevel.open_process(
                [tool("airunner-cli"), "monitor", job_id, "--server", watcher.url],
                env=clean_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            assert monitor.stdout is not None
            seen = b""
            with trio.fail_after(60):
                while b"ready\n" not in seen:
                    seen += await monitor.stdout.receive_some()
                # Live: the job is still waiting for the flag.
                assert b"done" not in seen
                flag.touch()
                while chunk := await monitor.stdout.receive_some():
                    seen += chunk
                assert await monitor.wait() == 0
            assert seen == b"ready\ndone\n"
        finally:
            worker.kill()
            await worker.wait()
