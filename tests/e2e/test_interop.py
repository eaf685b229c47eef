"""Other clients: buf curl over Connect, gRPC and gRPC-Web, from the schema file alone."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest
import trio

from airunner.store import TaskTokenSigner
from tests.helpers import ROOT, eventually, params, request_id, tool

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


async def test_poll_of_a_dequeuing_client_that_dies_is_let_go() -> None:
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
        # Its sockets closed when it died: the server ends its poll, long before
        # the 60 s window would.
        waiters = store._queues["default"].waiters  # type: ignore[attr-defined]
        await eventually(lambda: len(waiters) == 0)
        job = await store.enqueue_job(request_id(), "default", params())
        again = await store.dequeue_job("default", 60, deadline=trio.current_time())
        assert again is not None
        assert again.job.job_id == job.job_id
        # Its first delivery: the dead poll was never offered it.
        assert TaskTokenSigner(b"e2e-secret").verify(again.task_token).attempt == 1
