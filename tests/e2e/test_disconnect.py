"""Streams whose clients left are let go at once, over every protocol and both HTTP versions.

The clients here are minimal HTTP/1.1 and HTTP/2 clients on raw sockets (HTTP/2 framed by
the ``h2`` library), so that each test decides exactly when a connection closes or a
stream is reset; the live worker is connectrpc's own client.
"""

from __future__ import annotations

import logging
import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import h2.config
import h2.connection
import pytest
import trio

from airunner.api.job.v1.job_pb import DequeueJobRequest, StreamJobEventsRequest
from airunner.aws import open_aws_clients
from airunner.store import JobStore, MemoryJobStore, TaskTokenSigner
from airunner.store.sqs import SQSJobStore, create_resources
from tests.conftest import Metrics
from tests.helpers import params, request_id

from .conftest import Clients, RunningServer, run_server

pytestmark = pytest.mark.e2e

STREAM_JOB_EVENTS = "/job.v1.JobEventsService/StreamJobEvents"
DEQUEUE_JOB = "/job.v1.JobService/DequeueJob"

# "Promptly": the server reads a closed connection's EOF at once; the bound leaves
# room for a loaded machine, far below the 20 s poll window or a quiet job's life.
LET_GO_SECONDS = 5.0

# The server's task token secret (tests/e2e/conftest.py's run_server).
SECRET = b"e2e-secret"

# Hypercorn's default limit of concurrent streams on one HTTP/2 connection.
H2_STREAMS_PER_CONNECTION = 100


def envelope(message: bytes) -> bytes:
    """One message framed as Connect, gRPC and gRPC-Web all frame it."""
    return struct.pack(">BI", 0, len(message)) + message


def host_port(url: str) -> tuple[str, int]:
    where = urlsplit(url)
    assert where.hostname is not None
    assert where.port is not None
    return where.hostname, where.port


class Http1Stream:
    """One request on its own HTTP/1.1 connection; closing it closes the connection."""

    def __init__(self, connection: trio.SocketStream) -> None:
        self._connection = connection

    @classmethod
    async def open(cls, url: str, path: str, content_type: str, message: bytes) -> Http1Stream:
        connection = await trio.open_tcp_stream(*host_port(url))
        body = envelope(message)
        head = (
            f"POST {path} HTTP/1.1\r\nhost: {urlsplit(url).netloc}\r\n"
            f"content-type: {content_type}\r\ncontent-length: {len(body)}\r\n\r\n"
        )
        await connection.send_all(head.encode() + body)
        return cls(connection)

    async def close(self) -> None:
        await self._connection.aclose()


class Http2Connection:
    """gRPC over one HTTP/2 connection (prior knowledge), many streams on it."""

    def __init__(self, url: str, connection: trio.SocketStream) -> None:
        self._authority = urlsplit(url).netloc.encode()
        self._connection = connection
        self._h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )

    @classmethod
    async def open(cls, url: str) -> Http2Connection:
        made = cls(url, await trio.open_tcp_stream(*host_port(url)))
        made._h2.initiate_connection()
        await made._flush()
        return made

    async def request(self, path: str, message: bytes) -> int:
        """Send a whole gRPC request; return its stream id."""
        stream_id: int = self._h2.get_next_available_stream_id()
        self._h2.send_headers(
            stream_id,
            [
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":path", path.encode()),
                (b":authority", self._authority),
                (b"content-type", b"application/grpc+proto"),
                (b"te", b"trailers"),
            ],
        )
        self._h2.send_data(stream_id, envelope(message), end_stream=True)
        await self._flush()
        return stream_id

    async def reset(self, stream_id: int) -> None:
        """Cancel one call, as a gRPC client does, keeping the connection."""
        self._h2.reset_stream(stream_id)
        await self._flush()

    async def close(self) -> None:
        await self._connection.aclose()

    async def _flush(self) -> None:
        await self._connection.send_all(self._h2.data_to_send())


def server_connections(url: str) -> int:
    """The server's open TCP connections on ``url``'s port, read from the kernel: a
    connection whose client closed it stays here until the server closes its end."""
    port = urlsplit(url).port
    count = 0
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            local_port = int(fields[1].split(":")[1], 16)
            state = fields[3]
            # 0A is LISTEN; 06 TIME_WAIT is a closed connection's afterlife.
            if local_port == port and state not in ("0A", "06"):
                count += 1
    return count


async def within(seconds: float, condition: Callable[[], bool], what: str) -> None:
    """Wait until ``condition()`` holds, failing after ``seconds`` with ``what``."""
    deadline = trio.current_time() + seconds
    while not condition():
        if trio.current_time() > deadline:
            raise AssertionError(f"{what} after {seconds} s")
        await trio.sleep(0.02)


def _waiting(store: JobStore) -> int:
    """DequeueJob calls waiting on the store's default queue."""
    if isinstance(store, SQSJobStore):
        return len(store._jobs.pollers["default"]._waiters)  # type: ignore[attr-defined]
    waiters = store._queues["default"].waiters  # type: ignore[attr-defined]
    return len(waiters)


@asynccontextmanager
async def store_of_kind(kind: str, request: pytest.FixtureRequest) -> AsyncIterator[JobStore]:
    """A store whose actors the server starts, as ``airunner-server`` does."""
    if kind == "memory":
        yield MemoryJobStore(token_secret=SECRET)
        return
    request.getfixturevalue("aws_env")
    name = f"disconnect-{uuid.uuid4().hex[:8]}"
    async with open_aws_clients() as aws:
        resources = await create_resources(
            aws, environment=name, jobs_table=f"jobs-{name}", events_table=f"events-{name}"
        )
        yield SQSJobStore(
            aws,
            queue_urls=resources.queue_urls,
            jobs_table=resources.jobs_table,
            events_table=resources.events_table,
            default_visibility_timeout=300,
            token_secret=SECRET,
        )


async def test_many_dropped_event_streams_are_let_go(
    running: RunningServer, recorded: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    """500 StreamJobEvents on a job that publishes nothing, over Connect and gRPC-Web on
    HTTP/1.1 and gRPC on HTTP/2, all dropped: each subscription and each socket goes."""
    job = await running.store.enqueue_job(request_id(), "default", params())
    message = StreamJobEventsRequest(job_id=job.job_id).to_binary()
    before = recorded.total("airunner.streams.active")
    http1 = []
    for i in range(300):
        content_type = "application/connect+proto" if i % 2 else "application/grpc-web+proto"
        http1.append(await Http1Stream.open(running.url, STREAM_JOB_EVENTS, content_type, message))
    http2 = [await Http2Connection.open(running.url) for _ in range(2)]
    for connection in http2:
        for _ in range(H2_STREAMS_PER_CONNECTION):
            await connection.request(STREAM_JOB_EVENTS, message)
    opened = len(http1) + len(http2) * H2_STREAMS_PER_CONNECTION
    await within(
        10,
        lambda: recorded.total("airunner.streams.active") == before + opened,
        "not every stream was subscribed",
    )
    assert server_connections(running.url) == len(http1) + len(http2)

    with caplog.at_level(logging.WARNING):
        for each in [*http1, *http2]:
            await each.close()
        began = time.monotonic()
        await within(
            LET_GO_SECONDS,
            lambda: recorded.total("airunner.streams.active") == before,
            "subscriptions of gone clients are still open",
        )
        await within(
            LET_GO_SECONDS - (time.monotonic() - began),
            lambda: server_connections(running.url) == 0,
            "the server still holds sockets of gone clients",
        )
    # Letting go is routine: nothing is logged as a warning or worse.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.parametrize("kind", ["memory", pytest.param("sqs", marks=pytest.mark.aws)])
async def test_reset_http2_streams_are_let_go_and_their_connection_stays(
    kind: str, request: pytest.FixtureRequest, recorded: Metrics
) -> None:
    """A gRPC client cancelling calls resets their streams; the connection stays."""
    async with store_of_kind(kind, request) as given, run_server(store=given) as running:
        job = await running.store.enqueue_job(request_id(), "default", params())
        message = StreamJobEventsRequest(job_id=job.job_id).to_binary()
        before = recorded.total("airunner.streams.active")
        connection = await Http2Connection.open(running.url)
        streams = [await connection.request(STREAM_JOB_EVENTS, message) for _ in range(50)]
        await within(
            10,
            lambda: recorded.total("airunner.streams.active") == before + 50,
            "not every stream was subscribed",
        )
        for stream_id in streams[:40]:
            await connection.reset(stream_id)
        await within(
            LET_GO_SECONDS,
            lambda: recorded.total("airunner.streams.active") == before + 10,
            "subscriptions of reset streams are still open",
        )
        assert server_connections(running.url) == 1
        await connection.close()
        await within(
            LET_GO_SECONDS,
            lambda: recorded.total("airunner.streams.active") == before,
            "subscriptions of a closed connection are still open",
        )


@pytest.mark.parametrize("kind", ["memory", pytest.param("sqs", marks=pytest.mark.aws)])
async def test_a_job_goes_to_the_live_worker_not_to_dropped_polls(
    kind: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    """Polls over Connect and gRPC-Web on HTTP/1.1 and gRPC on HTTP/2 (connections closed,
    streams reset), all dropped; then a job is enqueued: the live worker gets it."""
    async with (
        store_of_kind(kind, request) as given,
        run_server(store=given, poll_window=60) as running,
    ):
        store = running.store
        message = DequeueJobRequest(queue="default", visibility_timeout_seconds=60).to_binary()
        dead_http1 = [
            await Http1Stream.open(
                running.url,
                DEQUEUE_JOB,
                "application/connect+proto" if i % 2 else "application/grpc-web+proto",
                message,
            )
            for i in range(20)
        ]
        dead_http2 = await Http2Connection.open(running.url)
        for _ in range(10):
            await dead_http2.request(DEQUEUE_JOB, message)
        dead_resets = await Http2Connection.open(running.url)
        resets = [await dead_resets.request(DEQUEUE_JOB, message) for _ in range(10)]
        await within(10, lambda: _waiting(store) == 40, "not every poll waits")

        clients = Clients(running.url)
        got: list[tuple[str, str]] = []

        def work() -> None:
            for response in clients.jobs.dequeue_job(
                DequeueJobRequest(queue="default", visibility_timeout_seconds=60)
            ):
                assert response.job is not None
                got.append((response.job.job_id, response.task_token))

        with caplog.at_level(logging.INFO), trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.to_thread.run_sync, work)
                await within(10, lambda: _waiting(store) == 41, "the live worker does not wait")
                for each in [*dead_http1, dead_http2]:
                    await each.close()
                for stream_id in resets:
                    await dead_resets.reset(stream_id)
                await within(
                    LET_GO_SECONDS,
                    lambda: _waiting(store) == 1,
                    "polls of gone clients still wait for a job",
                )
                job = await store.enqueue_job(request_id(), "default", params())
                await within(LET_GO_SECONDS, lambda: bool(got), "the live worker got no job")
                await dead_resets.close()
        clients.close()
        [(job_id, token)] = got
        assert job_id == job.job_id
        # Its first delivery: no gone client was offered it first.
        assert TaskTokenSigner(SECRET).verify(token).attempt == 1
        assert "its dequeuer left" not in caplog.text
