"""The event half of the JobStore contract: publish, store, replay and fan out."""

from __future__ import annotations

import pytest
import trio
import trio.lowlevel
from protobuf.wkt import Timestamp

from airunner.api.job.v1.job_pb import EventType, JobEvent
from airunner.store import (
    Delivery,
    EventQuery,
    EventStream,
    InvalidArgument,
    JobStore,
    NotFound,
    ResourceExhausted,
)
from airunner.store.rules import MAX_EVENT_BYTES, MAX_SEQUENCE, output_truncated_event
from tests.conftest import Metrics
from tests.helpers import end_event, output_event, result, start_event

from .conftest import SUBSCRIBER_BUFFER
from .test_jobs import enqueue, must_dequeue


async def running_job(store: JobStore, visibility: int = 0) -> Delivery:
    await enqueue(store)
    return await must_dequeue(store, visibility=visibility)


async def drain(stream: EventStream, limit: int = 10_000) -> list[JobEvent]:
    """Every event until the stream ends."""
    events = []
    for _ in range(limit):
        event = await stream.receive()
        if event is None:
            return events
        events.append(event)
    raise AssertionError("stream did not end")


async def take(stream: EventStream, count: int) -> list[JobEvent]:
    events = []
    for _ in range(count):
        event = await stream.receive()
        assert event is not None
        events.append(event)
    return events


def _covering(sequence: int, end: int) -> JobEvent:
    """An output batch from ``sequence`` to ``end``."""
    event = output_event(sequence)
    event.event_data.value.end_sequence = end  # type: ignore[union-attr]
    return event


class _at:
    """``event | _at(seconds)``: the event with that timestamp, in or out of range."""

    def __init__(self, seconds: int, nanos: int = 0) -> None:
        self.stamp = Timestamp(seconds=seconds, nanos=nanos)

    def __ror__(self, event: JobEvent) -> JobEvent:
        event.timestamp = self.stamp
        return event


def sequences(events: list[JobEvent]) -> list[int]:
    return [event.sequence for event in events]


async def finish(store: JobStore, delivery: Delivery, last_sequence: int) -> None:
    await store.publish_events(delivery.task_token, [end_event(last_sequence)])
    await store.complete_job(delivery.task_token, result(delivery.job.job_id))


async def test_history_then_end_after_final_event(store: JobStore) -> None:
    delivery = await running_job(store)
    await store.publish_events(delivery.task_token, [start_event(1), output_event(2)])
    await finish(store, delivery, 3)
    async with store.subscribe_events(delivery.job.job_id, EventQuery()) as stream:
        events = await drain(stream)
    assert sequences(events) == [1, 2, 3]
    assert [e.event_type for e in events] == [
        EventType.PROCESS_START,
        EventType.OUTPUT_BATCH,
        EventType.PROCESS_END,
    ]
    assert all(e.timestamp is not None for e in events)


async def test_resent_sequence_is_stored_once(store: JobStore) -> None:
    delivery = await running_job(store)
    await store.publish_events(delivery.task_token, [start_event(1), output_event(2, b"a")])
    await store.publish_events(delivery.task_token, [output_event(2, b"b"), output_event(3)])
    await finish(store, delivery, 4)
    async with store.subscribe_events(delivery.job.job_id, EventQuery()) as stream:
        events = await drain(stream)
    assert sequences(events) == [1, 2, 3, 4]
    batch = events[1].event_data
    assert batch is not None
    # One of the two sends: a worker re-sends the same event, so either will do.
    assert batch.value.outputs[0].output in (b"a", b"b")  # type: ignore[union-attr]


async def test_events_come_back_in_sequence_order(store: JobStore) -> None:
    delivery = await running_job(store)
    await store.publish_events(delivery.task_token, [output_event(3), start_event(1)])
    await store.publish_events(delivery.task_token, [output_event(2)])
    await finish(store, delivery, 4)
    async with store.subscribe_events(delivery.job.job_id, EventQuery()) as stream:
        assert sequences(await drain(stream)) == [1, 2, 3, 4]


async def test_live_events_follow_history_without_gap_or_duplicate(store: JobStore) -> None:
    delivery = await running_job(store)
    token = delivery.task_token
    await store.publish_events(token, [start_event(1), output_event(2)])
    received: list[JobEvent] = []

    async def watch() -> None:
        async with store.subscribe_events(delivery.job.job_id, EventQuery()) as stream:
            received.extend(await drain(stream))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        for sequence in range(3, 40):
            await store.publish_events(token, [output_event(sequence)])
            if sequence % 7 == 0:
                await trio.lowlevel.checkpoint()
        await finish(store, delivery, 40)
    assert sequences(received) == list(range(1, 41))


async def test_every_subscriber_gets_every_event_once(store: JobStore) -> None:
    delivery = await running_job(store)
    results: list[list[int]] = []

    async def watch(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with store.subscribe_events(delivery.job.job_id, EventQuery()) as stream:
            task_status.started()
            results.append(sequences(await drain(stream)))

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            await nursery.start(watch)
        await store.publish_events(delivery.task_token, [start_event(1), output_event(2)])
        await store.publish_events(delivery.task_token, [output_event(2), output_event(3)])
        await finish(store, delivery, 4)
    assert results == [[1, 2, 3, 4]] * 10


async def test_from_sequence_filters_history_and_live(store: JobStore) -> None:
    delivery = await running_job(store)
    await store.publish_events(delivery.task_token, [start_event(1), output_event(2)])
    async with store.subscribe_events(delivery.job.job_id, EventQuery(from_sequence=2)) as stream:
        await store.publish_events(delivery.task_token, [output_event(3)])
        await finish(store, delivery, 4)
        assert sequences(await drain(stream)) == [2, 3, 4]


async def test_from_timestamp_filters_history_and_live(store: JobStore) -> None:
    delivery = await running_job(store)
    token = delivery.task_token
    await store.publish_events(token, [start_event(1, ms=1_000), output_event(2, ms=2_000)])
    async with store.subscribe_events(
        delivery.job.job_id, EventQuery(from_timestamp_ms=2_000)
    ) as stream:
        await store.publish_events(token, [output_event(3, ms=1_500), output_event(4, ms=5_000)])
        await store.complete_job(token, result(delivery.job.job_id))
        assert sequences(await drain(stream)) == [2, 4]


async def test_event_filter_selects_types(store: JobStore) -> None:
    delivery = await running_job(store)
    await store.publish_events(delivery.task_token, [start_event(1), output_event(2)])
    query = EventQuery(event_types=frozenset({EventType.PROCESS_START, EventType.PROCESS_END}))
    async with store.subscribe_events(delivery.job.job_id, query) as stream:
        await store.publish_events(delivery.task_token, [output_event(3)])
        await finish(store, delivery, 4)
        events = await drain(stream)
    assert [e.event_type for e in events] == [EventType.PROCESS_START, EventType.PROCESS_END]


async def test_stream_ends_when_job_completes_without_final_event(store: JobStore) -> None:
    delivery = await running_job(store)
    await store.publish_events(delivery.task_token, [start_event(1)])
    async with store.subscribe_events(delivery.job.job_id, EventQuery()) as stream:
        assert sequences(await take(stream, 1)) == [1]
        await store.complete_job(
            delivery.task_token, result(delivery.job.job_id, success=False, exit_code=1)
        )
        assert await stream.receive() is None


async def test_stream_of_scheduled_job_waits_for_its_run(store: JobStore) -> None:
    job_id = await enqueue(store)
    async with store.subscribe_events(job_id, EventQuery()) as stream:
        delivery = await must_dequeue(store)
        await store.publish_events(delivery.task_token, [start_event(1)])
        assert sequences(await take(stream, 1)) == [1]
        await finish(store, delivery, 2)
        assert sequences(await drain(stream)) == [2]


async def test_cancelled_receive_loses_nothing(store: JobStore, clock: object) -> None:
    delivery = await running_job(store)
    async with store.subscribe_events(delivery.job.job_id, EventQuery()) as stream:
        with trio.move_on_after(1):
            await stream.receive()
        await store.publish_events(delivery.task_token, [start_event(1)])
        await finish(store, delivery, 2)
        assert sequences(await drain(stream)) == [1, 2]


async def test_slow_subscriber_does_not_block_publisher_and_is_told_where_to_resume(
    store: JobStore, recorded: Metrics
) -> None:
    overflows = recorded.total("airunner.channels.overflow.total")
    dropped = recorded.total("airunner.events.dropped.total")
    delivery = await running_job(store)
    token = delivery.task_token
    await store.publish_events(token, [start_event(1)])
    async with store.subscribe_events(delivery.job.job_id, EventQuery()) as slow:
        total = SUBSCRIBER_BUFFER * 3
        with trio.fail_after(30):
            for sequence in range(2, total + 2):
                await store.publish_events(token, [output_event(sequence)])
        await finish(store, delivery, total + 2)
        got: list[int] = []
        ended_with = ""
        try:
            while (event := await slow.receive()) is not None:
                got.append(event.sequence)
        except ResourceExhausted as e:
            # A store that buffers for its subscribers ends an overflowing
            # stream and says where to resume.
            ended_with = str(e)
        # Nothing was skipped: what came is a prefix of the log, in order.
        assert got == list(range(1, len(got) + 1))
        resume_from = None
        if ended_with:
            resume_from = got[-1] + 1
            assert f"from_sequence={resume_from}" in ended_with
    # An overflow is counted, with the events its subscriber did not get.
    assert recorded.total("airunner.channels.overflow.total") - overflows == (
        1 if ended_with else 0
    )
    assert (recorded.total("airunner.events.dropped.total") - dropped > 0) == bool(ended_with)
    if resume_from is None:
        assert got == list(range(1, total + 3))
        return
    async with store.subscribe_events(
        delivery.job.job_id, EventQuery(from_sequence=resume_from)
    ) as resumed:
        assert sequences(await drain(resumed)) == list(range(resume_from, total + 3))


async def test_publish_needs_current_token(store: JobStore, clock: object, slack: float) -> None:
    delivery = await running_job(store, visibility=3)
    await store.publish_events(delivery.task_token, [start_event(1)])
    await trio.sleep(3 + slack)
    with pytest.raises(InvalidArgument, match="no longer current"):
        await store.publish_events(delivery.task_token, [output_event(2)])
    with pytest.raises(InvalidArgument, match="task_token is required"):
        await store.publish_events("", [output_event(2)])


async def test_publish_after_completion_is_refused(store: JobStore) -> None:
    delivery = await running_job(store)
    await finish(store, delivery, 1)
    with pytest.raises(InvalidArgument, match="no longer current"):
        await store.publish_events(delivery.task_token, [output_event(2)])


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (output_event(0), "sequence must be between 1 and"),
        (output_event(MAX_SEQUENCE + 1), "sequence must be between 1 and"),
        (_covering(2, 2**63 - 1), "an output batch covers"),
        (_covering(3, 2), "an output batch covers"),
        (output_event(2, ms=1) | _at(253_402_300_800), "not a valid timestamp"),
        (output_event(2) | _at(1, nanos=1_000_000_000), "not a valid timestamp"),
        (output_event(2) | _at(1, nanos=-1), "not a valid timestamp"),
        (JobEvent(sequence=1), "unknown event_type 0"),
        (JobEvent(sequence=1, event_type=EventType(99)), "unknown event_type 99"),
        (output_event(1, b"x" * MAX_EVENT_BYTES), "the limit is"),
        (output_truncated_event(2, None, 10, 10), "OUTPUT_TRUNCATED events are the server's"),
        (JobEvent(sequence=2, event_type=EventType.OUTPUT_TRUNCATED), "are the server's own"),
    ],
)
async def test_publish_rejects_bad_events_and_stores_none_of_the_call(
    store: JobStore, event: JobEvent, message: str
) -> None:
    delivery = await running_job(store)
    with pytest.raises(InvalidArgument, match=message):
        await store.publish_events(delivery.task_token, [start_event(1), event])
    await store.complete_job(delivery.task_token, result(delivery.job.job_id))
    async with store.subscribe_events(delivery.job.job_id, EventQuery()) as stream:
        assert await drain(stream) == []


async def test_subscribe_to_unknown_job_is_not_found(store: JobStore) -> None:
    with pytest.raises(NotFound):
        async with store.subscribe_events("01900000-0000-7000-8000-000000000000", EventQuery()):
            pass


async def test_rerun_job_keeps_one_increasing_event_log(
    store: JobStore, clock: object, slack: float
) -> None:
    job_id = await enqueue(store)
    first = await must_dequeue(store, visibility=3)
    covering = output_event(2, b"one")
    covering.event_data.value.end_sequence = 4  # type: ignore[union-attr]
    await store.publish_events(first.task_token, [start_event(1), covering])
    async with store.subscribe_events(job_id, EventQuery()) as stream:
        assert sequences(await take(stream, 2)) == [1, 2]
        await trio.sleep(3.5 + slack)
        second = await must_dequeue(store, visibility=60)
        await store.publish_events(second.task_token, [start_event(1), output_event(2, b"two")])
        await finish(store, second, 3)
        rerun = await drain(stream)
    # The lost run is closed after its last output item (4), not just its last
    # event (2); the second run follows.
    assert sequences(rerun) == [5, 6, 7, 8]
    assert [e.event_type for e in rerun] == [
        EventType.PROCESS_ERROR,
        EventType.PROCESS_START,
        EventType.OUTPUT_BATCH,
        EventType.PROCESS_END,
    ]
    closing = rerun[0].event_data
    assert closing is not None
    assert closing.value.error_message == (  # type: ignore[union-attr]
        "run 1 lost its worker (no heartbeat within its visibility timeout); the job runs again"
    )
    batch = rerun[2].event_data
    assert batch is not None
    assert batch.value.start_sequence == batch.value.end_sequence == 7  # type: ignore[union-attr]
