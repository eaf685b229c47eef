"""Other clients: buf curl over Connect, gRPC and gRPC-Web, from the schema file alone."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest
import trio
import trio.testing

from airunner.store import TaskTokenSigner
from tests.helpers import ROOT, params, request_id, tool

from .conftest import RunningServer, run_server
from .test_rpc import wait_for_dequeuer

pytestmark = pytest.mark.e2e

SCHEMA = str(ROOT / "proto" / "job" / "v1" / "job.proto")


async def buf_curl(url: str, method: str, body: dict[str, object], *flags: str) -> object:
    """Run ``buf curl`` and return its JSON output (one object per message)."""
    result = await trio.run_process(
        [
            tool("buf"),
            "curl",
            "--schema",
            SCHEMA,
            *flags,
            "-d",
            json.dumps(body),
            f"{url}/{method}",
        ],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr.decode()
    decoder = json.JSONDecoder()
    text = result.stdout.decode().strip()
    messages = []
    while text:
        message, end = decoder.raw_decode(text)
        messages.append(message)
        text = text[end:].strip()
    return messages


@pytest.mark.parametrize(
    "flags",
    [
        pytest.param(["--protocol", "connect"], id="connect"),
        pytest.param(["--protocol", "grpc", "--http2-prior-knowledge"], id="grpc"),
        pytest.param(["--protocol", "grpcweb"], id="grpc-web"),
    ],
)
async def test_buf_curl_enqueues(running: RunningServer, flags: list[str]) -> None:
    body = {
        "requestId": request_id(),
        "queue": "default",
        "jobParams": {"command": "echo", "args": ["hi"], "processType": "PROCESS_TYPE_PTY"},
    }
    [response] = await buf_curl(running.url, "job.v1.JobService/EnqueueJob", body, *flags)
    assert response["state"] == "JOB_STATE_SCHEDULED"
    job = await running.store.get_job(response["jobId"])
    assert job.job_params is not None
    assert job.job_params.args == ["hi"]


@pytest.mark.parametrize(
    "flags",
    [
        pytest.param(["--protocol", "connect"], id="connect"),
        pytest.param(["--protocol", "grpc", "--http2-prior-knowledge"], id="grpc"),
    ],
)
async def test_buf_curl_dequeues_a_stream(running: RunningServer, flags: list[str]) -> None:
    first = await running.store.enqueue_job(request_id(), "default", params("one"))
    second = await running.store.enqueue_job(request_id(), "default", params("two"))
    messages = await buf_curl(
        running.url,
        "job.v1.JobService/DequeueJob",
        {"queue": "default", "maxJobs": 2, "visibilityTimeoutSeconds": 60},
        *flags,
    )
    assert [m["job"]["jobId"] for m in messages] == [first.job_id, second.job_id]  # type: ignore[index]
    assert all(m["taskToken"].startswith("v1.") for m in messages)  # type: ignore[index]


async def test_job_released_when_dequeuing_client_disconnects() -> None:
    async with run_server(poll_window=60) as running:
        store = running.store
        leaving = await trio.lowlevel.open_process(
            [
                tool("buf"),
                "curl",
                "--schema",
                SCHEMA,
                "-d",
                json.dumps({"queue": "default"}),
                f"{running.url}/job.v1.JobService/DequeueJob",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            await wait_for_dequeuer(store)
        finally:
            leaving.send_signal(signal.SIGKILL)
            await leaving.wait()
        # Let the server take in the disconnect: the client's sockets closed when
        # it died, so once every task is idle the server has read the EOF. (A job
        # sent in the same instant as a disconnect is lost to the client and
        # comes back when its visibility runs out; that race is not this test.)
        await trio.testing.wait_all_tasks_blocked(cushion=0.1)
        # The abandoned poll is still parked: it takes the job, fails to send
        # it and must release it at once.
        job = await store.enqueue_job(request_id(), "default", params())
        enqueued_at = trio.current_time()
        await trio.testing.wait_all_tasks_blocked(cushion=0.1)
        again = await store.dequeue_job("default", 60, deadline=enqueued_at + 1)
        assert again is not None, "job was not released within 1 s"
        assert again.job.job_id == job.job_id
        # The second delivery: the abandoned poll had the first.
        assert TaskTokenSigner(b"e2e-secret").verify(again.task_token).attempt == 2
