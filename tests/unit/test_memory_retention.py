"""The memory store keeps finished jobs up to a count, an output total and an age."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from airunner.api.job.v1.job_pb import JobState
from airunner.store import EventQuery, MemoryJobStore, NotFound
from tests.contract.test_events import drain
from tests.contract.test_output_cap import batch
from tests.helpers import end_event, params, result, start_event


async def _run(store: MemoryJobStore, request: str, output: int = 0) -> str:
    """Enqueue a job, run it (with ``output`` bytes counted toward the cap),
    complete it; return its id."""
    job = await store.enqueue_job(request, "default", params())
    delivery = await store.dequeue_job("default", 300, deadline=trio.current_time() + 1)
    assert delivery is not None
    assert delivery.job.job_id == job.job_id
    events = [start_event(1), batch(2, output)] if output else [start_event(1)]
    await store.publish_events(delivery.task_token, [*events, end_event(3)])
    await store.complete_job(delivery.task_token, result(job.job_id))
    return job.job_id


async def _kept(store: MemoryJobStore, job_id: str) -> bool:
    try:
        await store.get_job(job_id)
    except NotFound:
        return False
    return True


async def test_the_oldest_finished_jobs_go_past_the_count(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryJobStore(max_finished_jobs=3)
    async with trio.open_nursery() as nursery:
        for actor in store.actors():
            await nursery.start(actor.run)
        waiting = (await store.enqueue_job("waiting", "priority", params())).job_id
        # Its delivery expires first: the sweeper then meets the evicted jobs' expiries.
        held = await store.dequeue_job("priority", 5, deadline=trio.current_time() + 1)
        assert held is not None
        finished = [await _run(store, f"r{i}") for i in range(5)]
        assert [await _kept(store, job_id) for job_id in finished] == [False, False] + [True] * 3
        assert await _kept(store, waiting)
        page = await store.list_jobs("", JobState.UNSPECIFIED, 1, 50)
        assert [job.job_id for job in page.jobs] == [*reversed(finished[2:]), waiting]
        with pytest.raises(NotFound):
            async with store.subscribe_events(finished[0], EventQuery()):
                pass
        # An evicted job's request_id no longer finds it: it makes a new job.
        again = await store.enqueue_job("r0", "default", params())
        assert again.job_id != finished[0]
        assert again.state == JobState.SCHEDULED
        await trio.sleep(400)
        assert await _kept(store, waiting)
        assert (await store.get_job(waiting)).state == JobState.SCHEDULED
        nursery.cancel_scope.cancel()


async def test_the_oldest_finished_jobs_go_past_the_output_total() -> None:
    store = MemoryJobStore(max_output_bytes=600, max_finished_output_bytes=1000)
    first = await _run(store, "first", output=600)
    second = await _run(store, "second", output=400)
    assert await _kept(store, first)
    third = await _run(store, "third", output=200)
    assert [await _kept(store, job_id) for job_id in (first, second, third)] == [
        False,
        True,
        True,
    ]


async def test_finished_jobs_go_after_their_time_to_live(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryJobStore(finished_job_ttl=60, default_visibility_timeout=3600)
    waiting = (await store.enqueue_job("waiting", "priority", params())).job_id
    first = await _run(store, "first")
    await trio.sleep(30)
    second = await _run(store, "second")
    await trio.sleep(29.5)
    assert await _kept(store, first)
    await trio.sleep(0.5)
    assert not await _kept(store, first)
    assert await _kept(store, second)
    await trio.sleep(30)
    assert not await _kept(store, second)
    # Jobs that have not finished stay, however old.
    assert await _kept(store, waiting)


async def test_a_subscriber_of_an_evicted_job_ends_with_what_it_was_owed() -> None:
    store = MemoryJobStore(max_finished_jobs=1)
    job = await store.enqueue_job("watched", "default", params())
    delivery = await store.dequeue_job("default", 300, deadline=trio.current_time() + 1)
    assert delivery is not None
    async with store.subscribe_events(job.job_id, EventQuery()) as stream:
        await store.publish_events(delivery.task_token, [start_event(1)])
        assert (await stream.receive()) is not None
        await store.publish_events(delivery.task_token, [batch(2, 200), end_event(3)])
        await store.complete_job(delivery.task_token, result(job.job_id))
        await _run(store, "next")
        assert not await _kept(store, job.job_id)
        with trio.fail_after(1):
            rest = await drain(stream)
    assert [event.sequence for event in rest] == [2, 3]
