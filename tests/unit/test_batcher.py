"""OutputBatcher on trio's mock clock: size, count and time bounds of batches."""

from __future__ import annotations

import trio
import trio.testing

from airunner.api.job.v1.job_pb import (
    BatchingConfig,
    EventType,
    ExecutionConfig,
    JobEvent,
    StreamType,
)
from airunner.worker import BatchLimits, OutputBatcher, OutputChunk, Sequencer

KIB = 1024


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[float, JobEvent]] = []

    async def emit(self, event: JobEvent) -> None:
        self.events.append((trio.current_time(), event))

    def batches(self) -> list[list[bytes]]:
        return [
            [item.output for item in event.event_data.value.outputs]  # type: ignore[union-attr]
            for _, event in self.events
        ]


def limits(**overrides: object) -> BatchLimits:
    config = ExecutionConfig(
        batching=BatchingConfig(
            flush_interval_seconds=1, max_batch_size=1000, max_batch_bytes=256 * KIB
        ),
        output_flush_interval_millis=100,
    )
    base = BatchLimits.from_config(config)
    return BatchLimits(**(base.__dict__ | overrides))  # type: ignore[arg-type]


async def run_batcher(
    batch_limits: BatchLimits, feed: list[tuple[float, bytes]], linger: float = 0
) -> tuple[Recorder, Sequencer]:
    """Send each (delay, data) after its delay, then after ``linger`` close the output."""
    recorder = Recorder()
    sequences = Sequencer()
    send, receive = trio.open_memory_channel[OutputChunk](0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(OutputBatcher(batch_limits, sequences, recorder.emit).run, receive)
        async with send:
            for delay, data in feed:
                await trio.sleep(delay)
                await send.send(OutputChunk(data, StreamType.STDOUT, 0))
            await trio.sleep(linger)
    return recorder, sequences


def test_limits_come_from_the_execution_config() -> None:
    got = limits()
    assert (got.max_items, got.max_bytes, got.max_item_bytes) == (1000, 256 * KIB, 200 * KIB)
    assert got.flush_interval == 0.1
    capped = BatchLimits.from_config(
        ExecutionConfig(batching=BatchingConfig(max_batch_bytes=10 * 1024 * KIB))
    )
    assert capped.max_bytes == 256 * KIB
    assert BatchLimits.from_config(None).flush_interval == 0.1


async def test_a_lone_line_is_sent_at_once(autojump_clock: trio.testing.MockClock) -> None:
    start = trio.current_time()
    recorder, _ = await run_batcher(limits(), [(0, b"a"), (0.05, b"b"), (2, b"c")], linger=5)
    times = [round(when - start, 6) for when, _ in recorder.events]
    assert recorder.batches() == [[b"a"], [b"b"], [b"c"]]
    assert times == [0, 0.05, 2.05]


async def test_dense_output_is_batched_one_event_per_gap(
    autojump_clock: trio.testing.MockClock,
) -> None:
    start = trio.current_time()
    # A line every 3 ms for 300 ms: the first goes at once, the rest in
    # batches 10 ms apart.
    feed = [(0.003, b"line %d" % i) for i in range(100)]
    recorder, _ = await run_batcher(limits(), feed)
    times = [round(when - start, 6) for when, _ in recorder.events]
    assert [len(batch) for batch in recorder.batches()][:3] == [1, 3, 3]
    assert times[:3] == [0.003, 0.013, 0.023]
    assert len(recorder.events) <= 31
    assert [item for batch in recorder.batches() for item in batch] == [d for _, d in feed]


async def test_a_slow_emit_makes_the_next_batch_bigger(
    autojump_clock: trio.testing.MockClock,
) -> None:
    recorder = Recorder()

    async def slow_emit(event: JobEvent) -> None:
        await recorder.emit(event)
        await trio.sleep(0.5)

    send, receive = trio.open_memory_channel[OutputChunk](1000)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(OutputBatcher(limits(), Sequencer(), slow_emit).run, receive)
        async with send:
            for i in range(300):
                await trio.sleep(0.002)
                await send.send(OutputChunk(b"%d" % i, StreamType.STDOUT, 0))
    sizes = [len(batch) for batch in recorder.batches()]
    assert sum(sizes) == 300
    # While an emit takes 0.5 s the next batch gathers what arrives meanwhile.
    assert sizes[0] == 1
    assert sizes[1] > 200


async def test_heavy_output_is_batched_by_bytes_and_split_by_item(
    autojump_clock: trio.testing.MockClock,
) -> None:
    big = bytes(range(256)) * (900 * KIB // 256)
    recorder, _ = await run_batcher(limits(), [(0, big)])
    batches = recorder.batches()
    assert b"".join(b"".join(batch) for batch in batches) == big
    for batch in batches:
        assert sum(map(len, batch)) <= 256 * KIB
        assert max(map(len, batch)) <= 200 * KIB
    assert len(batches) == 5


async def test_item_count_bounds_a_batch(autojump_clock: trio.testing.MockClock) -> None:
    recorder, _ = await run_batcher(limits(max_items=3), [(0, b"x")] * 7)
    # The first goes at once; the rest come before the next is due.
    assert [len(batch) for batch in recorder.batches()] == [1, 3, 3]


async def test_sequences_cover_every_item(autojump_clock: trio.testing.MockClock) -> None:
    recorder, sequences = await run_batcher(limits(max_items=2), [(0, b"1"), (0, b"2"), (0, b"3")])
    spans = []
    for _, event in recorder.events:
        batch = event.event_data.value  # type: ignore[union-attr]
        assert event.event_type == EventType.OUTPUT_BATCH
        assert event.sequence == batch.start_sequence
        spans.append((batch.start_sequence, batch.end_sequence))
    assert spans == [(1, 1), (2, 3)]
    assert sequences.take() == 4


async def test_remaining_output_is_sent_when_the_output_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    recorder, _ = await run_batcher(limits(flush_interval=60), [(0, b"tail")])
    assert recorder.batches() == [[b"tail"]]
