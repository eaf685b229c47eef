"""OutputBatcher: groups a process's output into OUTPUT_BATCH events."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import trio
from protobuf import Oneof
from protobuf.wkt import Timestamp

from airunner.api.job.v1.job_pb import (
    EventType,
    ExecutionConfig,
    JobEvent,
    OutputBatchEvent,
    OutputItem,
    StreamType,
)

from ._process import OutputChunk
from ._redact import Redactor

# Bounds of one batch whatever a job's ExecutionConfig says: an event must fit
# the server's limit with room for its framing.
MAX_BATCH_BYTES = 256 * 1024
MAX_ITEM_BYTES = 200 * 1024
DEFAULT_MAX_BATCH_SIZE = 1000
# Output that comes in bursts reaches a watcher within about this long.
DEFAULT_FLUSH_INTERVAL_SECONDS = 0.1
# Events of one job are at least this far apart (or the flush interval, if
# shorter): a lone line goes out at once, dense output in batches.
MIN_EVENT_GAP_SECONDS = 0.01


class Sequencer:
    """Hands out the sequences of one execution: 1, 2, 3, ..."""

    def __init__(self) -> None:
        self._next = 1

    def take(self, count: int = 1) -> int:
        """Reserve ``count`` sequences; return the first."""
        first = self._next
        self._next += count
        return first


@dataclass(frozen=True)
class BatchLimits:
    max_items: int
    max_bytes: int
    max_item_bytes: int
    flush_interval: float
    playback_interval_millis: int

    @classmethod
    def from_config(cls, config: ExecutionConfig | None) -> BatchLimits:
        batching = config.batching if config is not None else None
        max_items = batching.max_batch_size if batching and batching.max_batch_size > 0 else 0
        max_bytes = batching.max_batch_bytes if batching and batching.max_batch_bytes > 0 else 0
        interval_ms = config.output_flush_interval_millis if config is not None else 0
        if interval_ms <= 0 and batching and batching.flush_interval_seconds > 0:
            interval_ms = batching.flush_interval_seconds * 1000
        limit_bytes = min(max_bytes or MAX_BATCH_BYTES, MAX_BATCH_BYTES)
        return cls(
            max_items=max_items or DEFAULT_MAX_BATCH_SIZE,
            max_bytes=limit_bytes,
            max_item_bytes=min(MAX_ITEM_BYTES, limit_bytes),
            flush_interval=interval_ms / 1000
            if interval_ms > 0
            else DEFAULT_FLUSH_INTERVAL_SECONDS,
            playback_interval_millis=batching.playback_interval_millis if batching else 0,
        )


class OutputBatcher:
    """Reads output chunks and emits OUTPUT_BATCH events.

    A batch is due when its first item arrives if the previous event went out
    at least ``MIN_EVENT_GAP_SECONDS`` before, else that long after the previous
    event: sparse output goes out at once, dense output in batches that grow
    with it. When due, it takes the chunks already waiting and is emitted. A
    batch is emitted sooner when it holds ``max_items`` items or when the next
    item would take it past ``max_bytes``, and never later than
    ``flush_interval`` after its first item arrived (emits that take long make
    later batches bigger, within those bounds); and when the output ends.
    Chunks larger than
    ``max_item_bytes`` are split. Every item takes one sequence; the event's own
    sequence is its first item's.

    With ``secrets``, their values are redacted first (``Redactor``): bytes
    that could begin one wait for the next read of their stream, for at most
    ``flush_interval``.
    """

    def __init__(
        self,
        limits: BatchLimits,
        sequences: Sequencer,
        emit: Callable[[JobEvent], Awaitable[None]],
        *,
        secrets: Sequence[bytes] = (),
    ) -> None:
        self._limits = limits
        self._sequences = sequences
        self._emit = emit
        self._items: list[OutputChunk] = []
        self._bytes = 0
        # When the batch being made is due, and when the last event went out.
        self._deadline = math.inf
        self._emitted_at = -math.inf
        self._gap = min(MIN_EVENT_GAP_SECONDS, limits.flush_interval)
        # Each stream's secrets are redacted on their own: a secret may be cut
        # across two reads of one stream, never across two streams.
        self._secrets = secrets
        self._redactors: dict[StreamType, Redactor] = {}
        # When the bytes a stream's redactor holds back are given out anyway,
        # and the time they were read.
        self._held_until: dict[StreamType, float] = {}
        self._held_at_ns: dict[StreamType, int] = {}

    async def run(self, chunks: trio.MemoryReceiveChannel[OutputChunk]) -> None:
        """Batch until ``chunks`` ends, then emit what is left."""
        async with chunks:
            while True:
                chunk = None
                if self._deadline <= trio.current_time():
                    # Due: the chunks already waiting go in it too.
                    try:
                        chunk = chunks.receive_nowait()
                    except trio.WouldBlock:
                        await self._flush()
                        continue
                    except trio.EndOfChannel:
                        break
                else:
                    # Only the wait is bounded by the flush deadline: an emit
                    # that is slow must never be cut short.
                    with trio.move_on_at(min([self._deadline, *self._held_until.values()])):
                        try:
                            chunk = await chunks.receive()
                        except trio.EndOfChannel:
                            break
                if chunk is None:
                    # Bytes that could have begun a secret, but no more came
                    # within the flush interval: the job's output must not wait.
                    # They have waited once: they go out now, not a batch later.
                    now = trio.current_time()
                    released = [s for s, until in self._held_until.items() if until <= now]
                    for stream in released:
                        await self._release(stream)
                    if released or self._deadline <= trio.current_time():
                        await self._flush()
                    continue
                await self._add(self._redacted(chunk))
            for stream in list(self._held_until):
                await self._release(stream)
        await self._flush()

    def _redacted(self, chunk: OutputChunk) -> OutputChunk:
        if not self._secrets:
            return chunk
        redactor = self._redactors.get(chunk.stream)
        if redactor is None:
            redactor = self._redactors[chunk.stream] = Redactor(self._secrets)
        data = redactor.feed(chunk.data)
        if redactor.held_bytes:
            self._held_until[chunk.stream] = trio.current_time() + self._limits.flush_interval
            self._held_at_ns[chunk.stream] = chunk.at_ns
        else:
            self._held_until.pop(chunk.stream, None)
        return OutputChunk(data, chunk.stream, chunk.at_ns)

    async def _release(self, stream: StreamType) -> None:
        del self._held_until[stream]
        data = self._redactors[stream].flush()
        await self._add(OutputChunk(data, stream, self._held_at_ns[stream]))

    async def _add(self, chunk: OutputChunk) -> None:
        for piece in self._split(chunk):
            if self._items and (
                self._bytes + len(piece.data) > self._limits.max_bytes
                or len(self._items) >= self._limits.max_items
            ):
                await self._flush()
            if not self._items:
                now = trio.current_time()
                self._deadline = min(
                    now + self._limits.flush_interval, max(now, self._emitted_at + self._gap)
                )
            self._items.append(piece)
            self._bytes += len(piece.data)
        if len(self._items) >= self._limits.max_items:
            await self._flush()

    def _split(self, chunk: OutputChunk) -> list[OutputChunk]:
        size = self._limits.max_item_bytes
        if not chunk.data:
            return []
        if len(chunk.data) <= size:
            return [chunk]
        return [
            OutputChunk(chunk.data[i : i + size], chunk.stream, chunk.at_ns)
            for i in range(0, len(chunk.data), size)
        ]

    async def _flush(self) -> None:
        self._deadline = math.inf
        if not self._items:
            return
        items, self._items, self._bytes = self._items, [], 0
        first = self._sequences.take(len(items))
        outputs = []
        previous_ms = items[0].at_ns // 1_000_000
        for item in items:
            at_ms = item.at_ns // 1_000_000
            outputs.append(
                OutputItem(
                    output=item.data,
                    stream_type=item.stream,
                    timestamp_delta_ms=max(0, at_ms - previous_ms),
                )
            )
            previous_ms = at_ms
        event = JobEvent(
            sequence=first,
            timestamp=Timestamp.from_nanos(items[0].at_ns),
            event_type=EventType.OUTPUT_BATCH,
            event_data=Oneof[Literal["output_batch"], OutputBatchEvent](
                field="output_batch",
                value=OutputBatchEvent(
                    outputs=outputs,
                    start_sequence=first,
                    end_sequence=first + len(items) - 1,
                    first_timestamp_ms=items[0].at_ns // 1_000_000,
                    playback_interval_millis=self._limits.playback_interval_millis,
                ),
            ),
        )
        await self._emit(event)
        self._emitted_at = trio.current_time()
