"""Queue sets: a dequeuer of several queues, and stores made with queue names of their own."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest
import trio
import trio.testing

from airunner.api.job.v1.job_pb import JobState
from airunner.store import Delivery, InvalidArgument, JobStore, MemoryJobStore
from tests.conftest import open_sqs_store
from tests.helpers import params, request_id

from .conftest import CONFIRM_SECONDS, POLL

BOTH = ["priority", "default"]
# Queue names of the store made with its own: none of the usual ones.
OWN_QUEUES = ("builds", "gpu-large")


async def enqueue(store: JobStore, queue: str) -> str:
    job = await store.enqueue_job(request_id(), queue, params())
    return job.job_id


async def dequeue(store: JobStore, queues: Sequence[str], wait: float = POLL) -> Delivery | None:
    return await store.dequeue_job(queues, 0, deadline=trio.current_time() + wait)


async def must_dequeue(store: JobStore, queues: Sequence[str]) -> Delivery:
    delivery = await dequeue(store, queues)
    assert delivery is not None
    return delivery


async def test_a_dequeuer_of_several_queues_takes_the_first_queues_job_first(
    store: JobStore, store_kind: str
) -> None:
    # The later queue's job is the older one: the order is the dequeuer's, not the jobs'.
    low = await enqueue(store, "default")
    high = await enqueue(store, "priority")
    first = await must_dequeue(store, BOTH)
    second = await must_dequeue(store, BOTH)
    assert {first.job.job_id, second.job.job_id} == {low, high}
    assert first.job.state == second.job.state == JobState.RUNNING
    if store_kind == "memory":
        # Exactly so. The SQS store keeps the order only roughly: each queue's
        # poller receives on its own, and the first message to arrive fills
        # the wait (the other goes back to its queue, using up nothing).
        assert [first.job.job_id, second.job.job_id] == [high, low]
    assert await dequeue(store, BOTH, wait=1) is None


async def test_the_memory_store_drains_the_first_queue_before_the_next() -> None:
    # The memory store's order is exact; the SQS store keeps it roughly (pollers
    # of several queues race), so only the memory store is held to it.
    store = MemoryJobStore()
    low = [await enqueue(store, "default") for _ in range(3)]
    high = [await enqueue(store, "priority") for _ in range(3)]
    taken = [(await must_dequeue(store, BOTH)).job.job_id for _ in range(6)]
    assert taken == high + low


@pytest.mark.parametrize("queue", ["default", "priority"])
async def test_a_job_on_either_queue_reaches_a_dequeuer_waiting_on_both(
    store: JobStore, queue: str
) -> None:
    taken: list[Delivery | None] = []

    async def wait_on_both() -> None:
        taken.append(await dequeue(store, BOTH))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait_on_both)
        await trio.testing.wait_all_tasks_blocked()
        job_id = await enqueue(store, queue)
    [delivery] = taken
    assert delivery is not None
    assert delivery.job.job_id == job_id
    assert delivery.job.state == JobState.RUNNING


async def test_a_dequeuer_of_several_queues_takes_one_job_and_leaves_the_other(
    store: JobStore,
) -> None:
    low = await enqueue(store, "default")
    high = await enqueue(store, "priority")
    first = await must_dequeue(store, BOTH)
    # Whichever queue's job it took, the other's job is still there for its own queue.
    other_queue, other_job = ("default", low) if first.job.job_id == high else ("priority", high)
    second = await must_dequeue(store, [other_queue])
    assert second.job.job_id == other_job


async def test_a_repeated_queue_counts_once(store: JobStore) -> None:
    job_id = await enqueue(store, "default")
    delivery = await must_dequeue(store, ["default", "default"])
    assert delivery.job.job_id == job_id


@pytest.mark.parametrize(
    "queues",
    [["default", "nightly"], ["nightly", "default"], ["nightly"], [], ["default", ""]],
)
async def test_an_unknown_or_missing_queue_in_the_list_is_invalid(
    store: JobStore, queues: list[str]
) -> None:
    await enqueue(store, "default")
    with pytest.raises(InvalidArgument, match=r"nightly|queue is required"):
        await dequeue(store, queues, wait=1)
    # Nothing was taken meanwhile.
    assert await dequeue(store, ["default"]) is not None


@pytest.fixture
async def own_store(
    store_kind: str, nursery: trio.Nursery, request: pytest.FixtureRequest
) -> AsyncIterator[JobStore]:
    """A store made to serve OWN_QUEUES only."""
    if store_kind == "memory":
        made: JobStore = MemoryJobStore(
            queues=OWN_QUEUES, token_secret=b"contract-secret", confirm_seconds=CONFIRM_SECONDS
        )
        for actor in made.actors():
            await nursery.start(actor.run)
        yield made
        return
    request.getfixturevalue("aws_env")
    async with open_sqs_store(queues=OWN_QUEUES, confirm_seconds=CONFIRM_SECONDS) as (
        sqs_store,
        _,
        _,
    ):
        yield sqs_store


async def test_a_store_serves_the_queue_names_it_was_made_with(own_store: JobStore) -> None:
    job_id = await enqueue(own_store, "gpu-large")
    delivery = await must_dequeue(own_store, ["builds", "gpu-large"])
    assert delivery.job.job_id == job_id
    page = await own_store.list_jobs("gpu-large", JobState.UNSPECIFIED, 1, 10)
    assert [job.job_id for job in page.jobs] == [job_id]
    for unknown in ("default", "priority"):
        with pytest.raises(InvalidArgument, match=f"unknown queue '{unknown}'"):
            await own_store.enqueue_job(request_id(), unknown, params())
        with pytest.raises(InvalidArgument, match=f"unknown queue '{unknown}'"):
            await dequeue(own_store, ["builds", unknown], wait=1)
