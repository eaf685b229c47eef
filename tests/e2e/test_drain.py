"""Graceful drain: in-flight calls finish, open long polls and streams end at once."""

from __future__ import annotations

import pytest
import trio
from connectrpc.code import Code
from connectrpc.errors import ConnectError

from airunner.api.job.v1.job_pb import (
    DequeueJobRequest,
    EnqueueJobRequest,
    Job,
    JobParams,
    StreamJobEventsRequest,
)
from airunner.store import JobStore, MemoryJobStore
from tests.helpers import eventually, params, request_id

from .conftest import Clients, run_server
from .test_rpc import wait_for_dequeuer

pytestmark = pytest.mark.e2e


class SlowEnqueue:
    """A memory store whose EnqueueJob takes a while, as a busy backend's would."""

    def __init__(self, seconds: float) -> None:
        self._store = MemoryJobStore()
        self._seconds = seconds
        self.started = trio.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    async def enqueue_job(self, request_id: str, queue: str, params: JobParams | None) -> Job:
        self.started.set()
        await trio.sleep(self._seconds)
        return await self._store.enqueue_job(request_id, queue, params)


async def test_in_flight_call_finishes_during_drain() -> None:
    store = SlowEnqueue(1.0)
    async with run_server(store=store, grace_period=20) as running:  # type: ignore[arg-type]
        clients = Clients(running.url)
        answers = []

        def submit() -> None:
            answers.append(
                clients.jobs.enqueue_job(
                    EnqueueJobRequest(
                        request_id=request_id(), queue="default", job_params=params()
                    )
                )
            )

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, submit)
            await store.started.wait()
            running.server.drain.begin()
        clients.close()
    assert len(answers) == 1
    assert answers[0].job_id


async def test_open_long_polls_and_streams_end_at_once() -> None:
    async with run_server(poll_window=60, grace_period=20) as running:
        store = running.store
        job = await store.enqueue_job(request_id(), "default", params())
        delivery = await store.dequeue_job("default", 60, deadline=trio.current_time() + 1)
        assert delivery is not None
        clients = Clients(running.url)
        outcomes: dict[str, object] = {}

        def poll() -> None:
            outcomes["poll"] = list(clients.jobs.dequeue_job(DequeueJobRequest(queue="default")))

        def watch() -> None:
            try:
                list(clients.events.stream_job_events(StreamJobEventsRequest(job_id=job.job_id)))
            except ConnectError as e:
                outcomes["watch"] = e

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.to_thread.run_sync, poll)
                nursery.start_soon(trio.to_thread.run_sync, watch)
                await wait_for_dequeuer(store)
                await wait_for_subscriber(store, job.job_id)
                running.server.drain.begin()
        clients.close()
    assert outcomes["poll"] == []
    error = outcomes["watch"]
    assert isinstance(error, ConnectError)
    assert error.code == Code.UNAVAILABLE
    assert "server is shutting down; reconnect with from_sequence=1" in error.message


async def wait_for_subscriber(store: JobStore, job_id: str) -> None:
    """Until a StreamJobEvents call follows the memory store's job."""
    jobs = store._jobs  # type: ignore[attr-defined]
    await eventually(lambda: bool(jobs[job_id].subscribers))
