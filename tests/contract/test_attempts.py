"""Attempts in the JobStore contract: a delivery is a run once its worker takes it up;
runs that lose their worker are closed in the log, and the job fails after its last."""

from __future__ import annotations

import pytest
import trio

from airunner.api.job.v1.job_pb import EventType, JobEvent, JobState
from airunner.store import Delivery, EventQuery, InvalidArgument, JobStore
from airunner.store.rules import MAX_ATTEMPTS_LIMIT
from tests.helpers import end_event, params, request_id, result, start_event

from .conftest import CONFIRM_SECONDS
from .test_events import drain
from .test_jobs import dequeue, must_dequeue, state_of

VISIBILITY = 2


async def _enqueue(store: JobStore, max_attempts: int = 0) -> str:
    job = await store.enqueue_job(request_id(), "default", params(max_attempts=max_attempts))
    return job.job_id


async def _lose_a_run(store: JobStore, slack: float) -> Delivery:
    """Take a delivery up (its first event), then let it expire."""
    delivery = await must_dequeue(store, visibility=VISIBILITY)
    await store.publish_events(delivery.task_token, [start_event(1)])
    await trio.sleep(VISIBILITY + slack + 0.5)
    return delivery


def _errors(events: list[JobEvent]) -> list[str]:
    return [
        event.event_data.value.error_message  # type: ignore[union-attr]
        for event in events
        if event.event_type == EventType.PROCESS_ERROR
    ]


async def test_a_delivery_not_taken_up_goes_back_within_the_confirm_window(
    store: JobStore, clock: object, slack: float
) -> None:
    job_id = await _enqueue(store)
    delivered_at = trio.current_time()
    delivery = await must_dequeue(store, visibility=300)
    await trio.sleep_until(delivered_at + CONFIRM_SECONDS + slack)
    assert await state_of(store, job_id) == JobState.SCHEDULED
    with pytest.raises(InvalidArgument, match="no longer current"):
        await store.publish_events(delivery.task_token, [])
    again = await must_dequeue(store)
    assert again.job.job_id == job_id


@pytest.mark.parametrize("how", ["publish", "update"])
async def test_a_delivery_taken_up_keeps_its_visibility(
    store: JobStore, clock: object, slack: float, how: str
) -> None:
    job_id = await _enqueue(store)
    delivered_at = trio.current_time()
    delivery = await must_dequeue(store, visibility=300)
    if how == "publish":
        # A first message with no events is how a worker takes a delivery up.
        await store.publish_events(delivery.task_token, [])
    else:
        await store.update_job("default", delivery.task_token, 300)
    await trio.sleep_until(delivered_at + CONFIRM_SECONDS + slack + 1)
    assert await state_of(store, job_id) == JobState.RUNNING
    await store.complete_job(delivery.task_token, result(job_id))
    assert await state_of(store, job_id) == JobState.COMPLETED


async def test_deliveries_not_taken_up_use_no_attempt(
    store: JobStore, clock: object, slack: float
) -> None:
    job_id = await _enqueue(store, max_attempts=1)
    for _ in range(3):
        await must_dequeue(store, visibility=300)
        await trio.sleep(CONFIRM_SECONDS + slack + 0.5)
        assert await state_of(store, job_id) == JobState.SCHEDULED
    delivery = await must_dequeue(store, visibility=300)
    await store.publish_events(delivery.task_token, [start_event(1)])
    await store.complete_job(delivery.task_token, result(job_id))
    assert await state_of(store, job_id) == JobState.COMPLETED
    async with store.subscribe_events(job_id, EventQuery()) as stream:
        assert _errors(await drain(stream)) == []


async def test_a_job_whose_runs_all_lose_their_worker_fails(
    store: JobStore, clock: object, slack: float
) -> None:
    job_id = await _enqueue(store, max_attempts=2)
    await _lose_a_run(store, slack)
    assert await state_of(store, job_id) == JobState.SCHEDULED
    last = await _lose_a_run(store, slack)
    # It ends when its last run is found lost: at once, or at its next receive.
    assert await dequeue(store, wait=3) is None
    assert await state_of(store, job_id) == JobState.FAILED
    # The lost run's worker comes back and reports what the store recorded:
    # its token is stale all the same.
    with pytest.raises(InvalidArgument, match="no longer current"):
        await store.complete_job(last.task_token, result(job_id, success=False, exit_code=-1))
    async with store.subscribe_events(job_id, EventQuery()) as stream:
        events = await drain(stream)
    # Each run's log ends in one final event, and each event names its run.
    assert [e.sequence for e in events] == [1, 2, 3, 4]
    assert [e.attempt for e in events] == [1, 1, 2, 2]
    assert [e.event_type for e in events] == [
        EventType.PROCESS_START,
        EventType.PROCESS_ERROR,
        EventType.PROCESS_START,
        EventType.PROCESS_ERROR,
    ]
    assert _errors(events) == [
        "run 1 lost its worker (no heartbeat within its visibility timeout); the job runs again",
        "run 2 lost its worker (no heartbeat within its visibility timeout);"
        " the job failed: lost its worker 2 times",
    ]


async def test_a_run_that_ended_its_log_is_not_closed_again(
    store: JobStore, clock: object, slack: float
) -> None:
    job_id = await _enqueue(store)
    delivery = await must_dequeue(store, visibility=VISIBILITY)
    # The worker stored its final event, then died before CompleteJob.
    await store.publish_events(delivery.task_token, [start_event(1), end_event(2)])
    await trio.sleep(VISIBILITY + slack + 0.5)
    again = await must_dequeue(store, visibility=60)
    # Whatever run a worker says its events are of, the store says which they are.
    sent = [start_event(1), end_event(2)]
    for event in sent:
        event.attempt = 7
    await store.publish_events(again.task_token, sent)
    await store.complete_job(again.task_token, result(job_id))
    async with store.subscribe_events(job_id, EventQuery()) as stream:
        events = await drain(stream)
    assert [e.attempt for e in events] == [1, 1, 2, 2]
    assert [e.event_type for e in events] == [
        EventType.PROCESS_START,
        EventType.PROCESS_END,
        EventType.PROCESS_START,
        EventType.PROCESS_END,
    ]


@pytest.mark.parametrize("max_attempts", [-1, MAX_ATTEMPTS_LIMIT + 1])
async def test_enqueue_rejects_an_attempt_limit_out_of_range(
    store: JobStore, max_attempts: int
) -> None:
    with pytest.raises(InvalidArgument, match="max_attempts must be between 0 and"):
        await store.enqueue_job(request_id(), "default", params(max_attempts=max_attempts))
