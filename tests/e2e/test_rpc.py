"""Every RPC over a real server on 127.0.0.1, with connectrpc's own clients."""

from __future__ import annotations

import httpx
import pytest
import trio
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.protocol import ProtocolType

from airunner.api.job.v1.job_pb import (
    CompleteJobRequest,
    DequeueJobRequest,
    EnqueueJobRequest,
    EventType,
    JobState,
    ListJobsRequest,
    PublishJobEventsRequest,
    StreamJobEventsRequest,
    UpdateJobRequest,
)
from airunner.store import JobStore
from tests.conftest import Metrics
from tests.helpers import (
    end_event,
    eventually,
    output_event,
    params,
    request_id,
    result,
    start_event,
)

from .conftest import Clients, RunningServer, run_server

pytestmark = pytest.mark.e2e

PROTOCOLS = [
    pytest.param(ProtocolType.CONNECT, False, id="connect"),
    pytest.param(ProtocolType.GRPC, True, id="grpc"),
    pytest.param(ProtocolType.GRPC_WEB, False, id="grpc-web"),
]


async def test_health_is_ok(running: RunningServer) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{running.url}/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.parametrize(("protocol", "http2"), PROTOCOLS)
async def test_job_lifecycle_over_every_rpc(
    running: RunningServer, protocol: ProtocolType, http2: bool
) -> None:
    clients = Clients(running.url, protocol=protocol, http2=http2)
    try:
        enqueued = await clients.call(
            clients.jobs.enqueue_job,
            EnqueueJobRequest(request_id=request_id(), queue="default", job_params=params("make")),
        )
        assert enqueued.state == JobState.SCHEDULED

        listed = await clients.call(clients.jobs.list_jobs, ListJobsRequest(queue="default"))
        assert [job.job_id for job in listed.jobs] == [enqueued.job_id]
        assert listed.last_page == 1

        deliveries = await clients.collect(
            clients.jobs.dequeue_job,
            DequeueJobRequest(queue="default", max_jobs=1, visibility_timeout_seconds=60),
        )
        assert len(deliveries) == 1
        delivery = deliveries[0]
        assert delivery.job is not None
        assert delivery.job.job_id == enqueued.job_id
        assert delivery.job.state == JobState.RUNNING
        token = delivery.task_token

        await clients.call(
            clients.jobs.update_job,
            UpdateJobRequest(queue="default", task_token=token, visibility_timeout_seconds=120),
        )
        await clients.call(
            clients.events.publish_job_events,
            iter(
                [
                    PublishJobEventsRequest(task_token=token, events=[start_event(1)]),
                    PublishJobEventsRequest(events=[output_event(2, b"out\n")]),
                    PublishJobEventsRequest(events=[end_event(3, exit_code=0)]),
                ]
            ),
        )
        await clients.call(
            clients.jobs.complete_job,
            CompleteJobRequest(task_token=token, job_result=result(enqueued.job_id)),
        )
        streamed = await clients.collect(
            clients.events.stream_job_events, StreamJobEventsRequest(job_id=enqueued.job_id)
        )
        assert [r.event.sequence for r in streamed if r.event] == [1, 2, 3]
        assert [r.event.event_type for r in streamed if r.event] == [
            EventType.PROCESS_START,
            EventType.OUTPUT_BATCH,
            EventType.PROCESS_END,
        ]
        done = await clients.call(
            clients.jobs.list_jobs, ListJobsRequest(state=JobState.COMPLETED)
        )
        assert [job.job_id for job in done.jobs] == [enqueued.job_id]
    finally:
        clients.close()


async def test_live_stream_receives_events_as_they_are_published(
    running: RunningServer, clients: Clients
) -> None:
    job = await running.store.enqueue_job(request_id(), "default", params())
    delivery = await running.store.dequeue_job("default", 60, deadline=trio.current_time() + 1)
    assert delivery is not None
    received: list[int] = []

    def watch() -> None:
        for response in clients.events.stream_job_events(
            StreamJobEventsRequest(job_id=job.job_id)
        ):
            assert response.event is not None
            received.append(response.event.sequence)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, watch)
        await running.store.publish_events(delivery.task_token, [start_event(1)])
        await eventually(lambda: received == [1])
        await running.store.publish_events(delivery.task_token, [end_event(2)])
        await running.store.complete_job(delivery.task_token, result(job.job_id))
    assert received == [1, 2]


async def test_long_poll_is_woken_by_enqueue() -> None:
    async with run_server(poll_window=60) as running:
        clients = Clients(running.url)
        got: list[str] = []

        def poll() -> None:
            for response in clients.jobs.dequeue_job(DequeueJobRequest(queue="default")):
                assert response.job is not None
                got.append(response.job.job_id)

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.to_thread.run_sync, poll)
                await wait_for_dequeuer(running.store)
                job = await running.store.enqueue_job(request_id(), "default", params())
        assert got == [job.job_id]
        clients.close()


async def test_poll_window_ends_with_no_job_and_no_error() -> None:
    async with run_server(poll_window=0.5) as running:
        clients = Clients(running.url)
        with trio.fail_after(10):
            responses = await clients.collect(
                clients.jobs.dequeue_job, DequeueJobRequest(queue="default", max_jobs=3)
            )
        clients.close()
    assert responses == []


async def test_errors_carry_their_connect_codes(clients: Clients) -> None:
    with pytest.raises(ConnectError) as info:
        await clients.call(
            clients.jobs.enqueue_job,
            EnqueueJobRequest(request_id="r", queue="nope", job_params=params()),
        )
    assert info.value.code == Code.INVALID_ARGUMENT
    assert "unknown queue 'nope'" in info.value.message

    with pytest.raises(ConnectError) as info:
        await clients.collect(
            clients.events.stream_job_events,
            StreamJobEventsRequest(job_id="01900000-0000-7000-8000-000000000000"),
        )
    assert info.value.code == Code.NOT_FOUND

    with pytest.raises(ConnectError) as info:
        await clients.call(
            clients.jobs.complete_job,
            CompleteJobRequest(task_token="v1.bogus.token", job_result=result("x")),
        )
    assert info.value.code == Code.INVALID_ARGUMENT

    with pytest.raises(ConnectError) as info:
        await clients.collect(
            clients.jobs.dequeue_job, DequeueJobRequest(queue="default", max_jobs=50)
        )
    assert info.value.code == Code.INVALID_ARGUMENT


async def test_refused_publishes_are_counted_by_reason(
    clients: Clients, recorded: Metrics
) -> None:
    refused = recorded.total("airunner.events.publish.errors.total", reason="invalid_argument")
    with pytest.raises(ConnectError) as info:
        await clients.call(
            clients.events.publish_job_events,
            iter([PublishJobEventsRequest(task_token="v1.bogus.token", events=[start_event(1)])]),
        )
    assert info.value.code == Code.INVALID_ARGUMENT
    after = recorded.total("airunner.events.publish.errors.total", reason="invalid_argument")
    assert after - refused == 1


class _BrokenStore:
    """A store whose every call fails as an unexpected bug would."""

    def __getattr__(self, name: str) -> object:
        raise RuntimeError("password=hunter2 in a traceback")


async def test_unexpected_errors_are_internal_without_details(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from airunner.actors import HttpFront
    from airunner.http import Drain, build_app

    drain = Drain()
    app = build_app(_BrokenStore(), auth=None, drain=drain)  # type: ignore[arg-type]
    front = HttpFront(app, "127.0.0.1:0", shutdown_trigger=drain.wait, grace_period=1)
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(front.run)
        clients = Clients(binds[0])
        with pytest.raises(ConnectError) as info:
            await clients.call(clients.jobs.list_jobs, ListJobsRequest())
        clients.close()
        drain.begin()
    assert info.value.code == Code.INTERNAL
    assert info.value.message == "internal error"
    assert "hunter2" in caplog.text


async def test_connection_survives_thousands_of_requests(running: RunningServer) -> None:
    clients = Clients(running.url, http2=True)

    def many() -> int:
        done = 0
        for _ in range(1500):
            clients.jobs.list_jobs(ListJobsRequest(page_size=1), headers={})
            done += 1
        return done

    assert await trio.to_thread.run_sync(many) == 1500
    clients.close()


async def wait_for_dequeuer(store: JobStore, queue: str = "default", count: int = 1) -> None:
    """Until ``count`` DequeueJob calls wait on the memory store's queue."""
    waiters = store._queues[queue].waiters  # type: ignore[attr-defined]
    await eventually(lambda: len(waiters) >= count)
