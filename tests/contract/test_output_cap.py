"""The output cap in the JobStore contract: a job stores at most its limit of
output over all its runs, and its log says where the output stopped, once."""

from __future__ import annotations

import trio
from protobuf import Oneof

from airunner.api.job.v1.job_pb import (
    EventType,
    JobEvent,
    OutputBatchEvent,
    OutputItem,
    StreamType,
)
from airunner.store import EventQuery, JobStore
from airunner.store.rules import OUTPUT_ITEM_OVERHEAD_BYTES, output_bytes
from tests.helpers import end_event, output_event, result, start_event

from .conftest import OUTPUT_LIMIT
from .test_attempts import VISIBILITY
from .test_events import drain, finish, running_job, sequences
from .test_jobs import enqueue, must_dequeue


def batch(sequence: int, *counted: int) -> JobEvent:
    """An output batch from ``sequence``, one item (one sequence) for each
    number: the bytes it counts toward the cap (its own and the overhead)."""
    items = [
        OutputItem(
            output=b"x" * (size - OUTPUT_ITEM_OVERHEAD_BYTES), stream_type=StreamType.STDOUT
        )
        for size in counted
    ]
    return JobEvent(
        sequence=sequence,
        event_type=EventType.OUTPUT_BATCH,
        event_data=Oneof(
            field="output_batch",
            value=OutputBatchEvent(
                outputs=items, start_sequence=sequence, end_sequence=sequence + len(items) - 1
            ),
        ),
    )


async def log_of(store: JobStore, job_id: str, from_sequence: int = 0) -> list[JobEvent]:
    async with store.subscribe_events(job_id, EventQuery(from_sequence=from_sequence)) as stream:
        return await drain(stream)


def truncations(events: list[JobEvent]) -> list[tuple[int, int, int]]:
    """(sequence, limit_bytes, stored_bytes) of each OUTPUT_TRUNCATED event."""
    found = []
    for event in events:
        if event.event_type == EventType.OUTPUT_TRUNCATED:
            data = event.event_data
            assert data is not None
            assert data.field == "output_truncated"
            found.append((event.sequence, data.value.limit_bytes, data.value.stored_bytes))
    return found


def stored_output(events: list[JobEvent]) -> int:
    return sum(output_bytes(event) for event in events)


async def test_output_past_the_limit_is_cut_where_it_stops(store: JobStore) -> None:
    delivery = await running_job(store)
    token = delivery.task_token
    live: list[JobEvent] = []

    async def watch(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with store.subscribe_events(delivery.job.job_id, EventQuery()) as stream:
            task_status.started()
            live.extend(await drain(stream))

    async with trio.open_nursery() as nursery:
        await nursery.start(watch)
        await store.publish_events(token, [start_event(1), batch(2, 3000, 3000)])
        # 4000 bytes of room: the first item fits, the second does not.
        await store.publish_events(token, [batch(4, 3000, 3000, 3000)])
        await store.publish_events(token, [batch(7, 130)])
        await finish(store, delivery, 8)
    events = await log_of(store, delivery.job.job_id)
    assert sequences(events) == [1, 2, 4, 5, 8]
    assert events == live
    cut = events[2].event_data
    assert cut is not None
    assert cut.field == "output_batch"
    assert (cut.value.start_sequence, cut.value.end_sequence) == (4, 4)
    assert len(cut.value.outputs) == 1
    assert truncations(events) == [(5, OUTPUT_LIMIT, 9000)]
    assert stored_output(events) == 9000
    # The cut event and the truncation are the run's, like the rest.
    assert {event.attempt for event in events} == {1}
    # The job still ends as its worker said.
    assert events[-1].event_type == EventType.PROCESS_END
    # A reader resuming at the cut sees it, then the end.
    assert sequences(await log_of(store, delivery.job.job_id, from_sequence=5)) == [5, 8]


async def test_output_that_just_fits_is_stored_whole(store: JobStore) -> None:
    delivery = await running_job(store)
    token = delivery.task_token
    await store.publish_events(token, [start_event(1), batch(2, OUTPUT_LIMIT)])
    await store.publish_events(token, [output_event(3, b"!")])
    await finish(store, delivery, 4)
    events = await log_of(store, delivery.job.job_id)
    # No item of the second batch fits: the truncation event takes its sequence.
    assert sequences(events) == [1, 2, 3, 4]
    assert truncations(events) == [(3, OUTPUT_LIMIT, OUTPUT_LIMIT)]
    assert stored_output(events) == OUTPUT_LIMIT


async def test_each_item_counts_its_overhead_too(store: JobStore) -> None:
    delivery = await running_job(store)
    # Items of one byte each: 77 fit, with their overhead.
    await store.publish_events(delivery.task_token, [start_event(1), batch(2, *[129] * 100)])
    await finish(store, delivery, 102)
    events = await log_of(store, delivery.job.job_id)
    assert sequences(events) == [1, 2, 79, 102]
    cut = events[1].event_data
    assert cut is not None
    assert cut.field == "output_batch"
    assert [item.output for item in cut.value.outputs] == [b"x"] * 77
    assert truncations(events) == [(79, OUTPUT_LIMIT, 77 * 129)]


async def test_events_sent_again_are_counted_once_and_cut_once(
    store: JobStore,
) -> None:
    delivery = await running_job(store)
    token = delivery.task_token
    await store.publish_events(token, [start_event(1), batch(2, 6000)])
    # Sent again before the cut: stored once, counted once.
    await store.publish_events(token, [start_event(1), batch(2, 6000)])
    sent = [start_event(1), batch(2, 6000), batch(3, 3000, 3000), batch(5, 150)]
    await store.publish_events(token, sent)
    # A worker that reconnects sends everything again, and then more.
    await store.publish_events(token, [*sent, batch(6, 150)])
    for event in sent:
        await store.publish_events(token, [event])
    await finish(store, delivery, 7)
    events = await log_of(store, delivery.job.job_id)
    assert sequences(events) == [1, 2, 3, 4, 7]
    assert truncations(events) == [(4, OUTPUT_LIMIT, 9000)]
    assert stored_output(events) == 9000


async def test_the_limit_counts_the_output_of_every_run(
    store: JobStore, clock: object, slack: float
) -> None:
    job_id = await enqueue(store)
    first = await must_dequeue(store, visibility=VISIBILITY)
    await store.publish_events(first.task_token, [start_event(1), batch(2, 7000)])
    await trio.sleep(VISIBILITY + slack + 0.5)
    second = await must_dequeue(store, visibility=60)
    await store.publish_events(second.task_token, [start_event(1), batch(2, 2000, 2000)])
    await finish(store, second, 4)
    events = await log_of(store, job_id)
    # Run 1: 1, 2, its closing error (3); run 2 from 4: the cut batch, the cut.
    assert sequences(events) == [1, 2, 3, 4, 5, 6, 7]
    assert truncations(events) == [(6, OUTPUT_LIMIT, 9000)]
    assert stored_output(events) == 9000


async def test_output_after_the_cut_is_dropped_in_later_runs_too(
    store: JobStore, clock: object, slack: float
) -> None:
    job_id = await enqueue(store)
    first = await must_dequeue(store, visibility=VISIBILITY)
    await store.publish_events(first.task_token, [start_event(1), batch(2, 6000, 6000)])
    await trio.sleep(VISIBILITY + slack + 0.5)
    second = await must_dequeue(store, visibility=60)
    token = second.task_token
    await store.publish_events(token, [start_event(1), batch(2, 129), batch(3, 129)])
    # The new run's worker sends it all again.
    await store.publish_events(token, [start_event(1), batch(2, 129), batch(3, 129)])
    await store.publish_events(token, [end_event(4)])
    await store.complete_job(token, result(job_id))
    events = await log_of(store, job_id)
    # Run 1: 1, 2 (cut), 3 (the cut), its closing error (4); run 2 from 5: start, end.
    assert sequences(events) == [1, 2, 3, 4, 5, 8]
    assert truncations(events) == [(3, OUTPUT_LIMIT, 6000)]
    assert stored_output(events) == 6000
    assert events[-1].event_type == EventType.PROCESS_END
