"""airunner.client from trio: calls end promptly when cancelled or out of time."""

from __future__ import annotations

import signal
import socket
import subprocess
from collections.abc import AsyncGenerator
from contextlib import aclosing

import pytest
import trio
from connectrpc.code import Code
from connectrpc.errors import ConnectError

from airunner.api.job.v1.job_pb import (
    DequeueJobRequest,
    EnqueueJobRequest,
    ListJobsRequest,
    StreamJobEventsRequest,
)
from airunner.client import AirunnerClient, ClientConfigError
from airunner.http import BearerAuth, load_public_key
from tests.helpers import (
    clean_env,
    output_event,
    params,
    read_until,
    request_id,
    start_event,
    tool,
)

from .conftest import KeyPair, RunningServer, run_server
from .test_drain import SlowEnqueue


@pytest.mark.e2e
async def test_cancelled_long_poll_returns_at_once(running: RunningServer) -> None:
    async with AirunnerClient(running.url) as client:
        start = trio.current_time()
        with trio.move_on_after(0.3):
            async with aclosing(
                client.dequeue_job(DequeueJobRequest(queue="default"), rpc_timeout=30)
            ) as deliveries:
                async for _ in deliveries:
                    pass
        assert trio.current_time() - start < 1.5
        # The client still works afterwards.
        await client.list_jobs(ListJobsRequest())


@pytest.mark.e2e
async def test_cancelled_unary_call_returns_at_once() -> None:
    async with run_server(store=SlowEnqueue(10)) as running:  # type: ignore[arg-type]
        async with AirunnerClient(running.url) as client:
            start = trio.current_time()
            with trio.move_on_after(0.3):
                await client.enqueue_job(
                    EnqueueJobRequest(
                        request_id=request_id(), queue="default", job_params=params()
                    )
                )
            assert trio.current_time() - start < 1.5
        running.server.drain.begin()


@pytest.mark.e2e
async def test_deadline_ends_a_long_poll() -> None:
    async with run_server(poll_window=30) as running, AirunnerClient(running.url) as client:
        start = trio.current_time()
        with pytest.raises(ConnectError) as info:
            async for _ in client.dequeue_job(DequeueJobRequest(queue="default"), rpc_timeout=0.5):
                pass
        assert info.value.code == Code.DEADLINE_EXCEEDED
        assert trio.current_time() - start < 5


@pytest.mark.e2e
async def test_errors_keep_their_codes(running: RunningServer) -> None:
    async with AirunnerClient(running.url) as client:
        with pytest.raises(ConnectError) as info:
            await client.list_jobs(ListJobsRequest(queue="nope"))
    assert info.value.code == Code.INVALID_ARGUMENT


@pytest.mark.parametrize("server", ["127.0.0.1:8080", "ftp://host", "http://"])
def test_server_must_be_an_http_url(server: str) -> None:
    with pytest.raises(ClientConfigError, match="http:// or https://"):
        AirunnerClient(server)


@pytest.mark.e2e
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_monitor_stops_promptly_on_a_signal(
    running: RunningServer, signum: signal.Signals
) -> None:
    store = running.store
    job = await store.enqueue_job(request_id(), "default", params())
    delivery = await store.dequeue_job("default", 600, deadline=trio.current_time() + 1)
    assert delivery is not None
    await store.publish_events(delivery.task_token, [start_event(1)])
    process = await trio.lowlevel.open_process(
        [tool("airunner-cli"), "monitor", job.job_id, "--server", running.url],
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    # Following the job once it printed the start event.
    await read_until(process.stderr, b"process started")
    process.send_signal(signum)
    with trio.fail_after(10):
        code = await process.wait()
    assert code == 128 + signum


@pytest.mark.e2e
async def test_cli_reports_a_refused_token(key_pair: KeyPair) -> None:
    auth = BearerAuth(load_public_key(key_pair.public_pem))
    async with run_server(auth=auth) as running:
        done = await trio.run_process(
            [tool("airunner-cli"), "list", "--server", running.url],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=clean_env(AIRUNNER_TOKEN="not-a-token"),
        )
        assert done.returncode == 1
        [line] = done.stderr.decode().strip().splitlines()
        assert "refused the request: invalid bearer token" in line
        good = await trio.run_process(
            [tool("airunner-cli"), "list", "--server", running.url, "--token", key_pair.token()],
            capture_stdout=True,
            check=False,
            env=clean_env(),
        )
        assert good.returncode == 0


@pytest.mark.e2e
@pytest.mark.parametrize("command", ["list", "monitor"])
async def test_cli_ends_quietly_when_its_reader_leaves(
    running: RunningServer, command: str
) -> None:
    """`list | head` and `monitor J | head`: status 141 as for SIGPIPE, no traceback."""
    store = running.store
    for _ in range(300):
        await store.enqueue_job(request_id(), "default", params("echo", "x" * 500))
    if command == "list":
        args = ["list", "--json", "--page-size", "300"]
    else:
        delivery = await store.dequeue_job("default", 600, deadline=trio.current_time() + 1)
        assert delivery is not None
        assert delivery.job is not None
        lines = [output_event(n, b"y" * 1000 + b"\n") for n in range(2, 301)]
        await store.publish_events(delivery.task_token, [start_event(1), *lines])
        args = ["monitor", delivery.job.job_id]
    process = await trio.lowlevel.open_process(
        [tool("airunner-cli"), *args, "--server", running.url],
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    await process.stdout.receive_some(100)
    await process.stdout.aclose()
    errors = b""
    with trio.fail_after(20):
        while chunk := await process.stderr.receive_some():
            errors += chunk
        code = await process.wait()
    assert code == 128 + signal.SIGPIPE
    assert "Traceback" not in errors.decode()


def _unreachable_url() -> str:
    """An address nothing listens on: connections to it are refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


@pytest.mark.e2e
async def test_an_unreachable_server_is_passed_over_for_the_next(
    running: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    dead = _unreachable_url()
    async with AirunnerClient([dead, running.url]) as client:
        await client.enqueue_job(
            EnqueueJobRequest(request_id=request_id(), queue="default", job_params=params())
        )
        # A server stream too, and the calls after it stay on the server that answered.
        async with aclosing(
            client.dequeue_job(DequeueJobRequest(queue="default"), rpc_timeout=30)
        ) as deliveries:
            async for delivery in deliveries:
                assert delivery.job is not None
                break
        await client.list_jobs(ListJobsRequest())
    passed_over = [r.getMessage() for r in caplog.records if "cannot reach" in r.getMessage()]
    assert len(passed_over) == 1
    assert passed_over[0].startswith(f"cannot reach the server at {dead} (")
    assert passed_over[0].endswith(f"; trying {running.url}")


@pytest.mark.e2e
async def test_a_server_stream_passes_over_an_unreachable_server() -> None:
    dead = _unreachable_url()
    async with run_server() as running, AirunnerClient([dead, running.url]) as client:
        events = client.stream_job_events(StreamJobEventsRequest(job_id="no-such-job"))
        with pytest.raises(ConnectError) as info:
            await _exhaust(events)
    # The answer of the server that was reached, not the refused connection.
    assert info.value.code == Code.NOT_FOUND


async def _exhaust(stream: AsyncGenerator[object, None]) -> None:
    async with aclosing(stream):
        async for _ in stream:
            pass


@pytest.mark.e2e
async def test_only_unreachable_servers_fail_with_unavailable() -> None:
    async with AirunnerClient([_unreachable_url(), _unreachable_url()]) as client:
        with pytest.raises(ConnectError) as info:
            await client.list_jobs(ListJobsRequest())
    assert info.value.code == Code.UNAVAILABLE


@pytest.mark.e2e
async def test_an_answered_error_is_not_tried_on_the_next_server(
    running: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with AirunnerClient([running.url, _unreachable_url()]) as client:
        with pytest.raises(ConnectError) as info:
            await client.list_jobs(ListJobsRequest(queue="nope"))
    assert info.value.code == Code.INVALID_ARGUMENT
    assert not [r for r in caplog.records if "cannot reach" in r.getMessage()]


@pytest.mark.e2e
@pytest.mark.parametrize("given", ["flags", "env"])
async def test_the_cli_takes_several_servers(running: RunningServer, given: str) -> None:
    # The last --server does not win: each is tried in turn.
    servers = [_unreachable_url(), running.url, _unreachable_url()]
    if given == "flags":
        args = [arg for url in servers for arg in ("--server", url)]
        env = clean_env()
    else:
        args = []
        env = clean_env(AIRUNNER_SERVER=",".join(servers))
    done = await trio.run_process(
        [tool("airunner-cli"), "submit", "--detach", *args, "--", "echo", "hello"],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.decode().split()[-1]
    assert (await running.store.get_job(job_id)) is not None
