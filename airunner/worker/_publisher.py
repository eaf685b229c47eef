"""EventPublisher: one execution's events, on a PublishJobEvents stream, until stored."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import trio
from connectrpc.code import Code
from connectrpc.errors import ConnectError

from airunner.api.job.v1.job_pb import JobEvent, PublishJobEventsRequest
from airunner.client import AirunnerClient

from ._spool import KeptEvents

log = logging.getLogger(__name__)

# Events a producer may have waiting before it blocks (and with it the process).
INPUT_BUFFER = 64
# Events kept for re-sending on a new stream if this one fails (``KeptEvents``).
# The server only says it stored the events when the stream ends, so everything
# sent since is kept: in memory up to this many bytes, then in a spool file up
# to SPOOL_BYTES more; past that, lost output is marked where it was if it must
# be sent again (start and end events are always kept).
RETAIN_BYTES = 64 * 1024 * 1024
SPOOL_BYTES = 1024 * 1024 * 1024
# One request message carries the events waiting at the moment, up to this size.
MESSAGE_BYTES = 1024 * 1024
# The most an output batch's encoding adds to its output: per item the output's
# tag and length (up to 2 GiB), the item's tag and length, its stream type and
# time delta; per event every other field of the event and of the batch.
ITEM_FRAMING_BYTES = 1 + 5 + 1 + 5 + 11 + 11
EVENT_FRAMING_BYTES = 128
# A stream that the server fails this many times in a row gives up; one that
# cannot reach a server is tried again for as long as the delivery holds.
MAX_ATTEMPTS = 8
BACKOFF_INITIAL_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 8.0
# Errors no retry can fix: the delivery is gone or we may not publish.
FATAL_CODES = frozenset(
    {Code.INVALID_ARGUMENT, Code.UNAUTHENTICATED, Code.PERMISSION_DENIED, Code.NOT_FOUND}
)


class PublishFailed(Exception):
    """The events could not all be stored; the message says why."""


class DeliveryExpired(PublishFailed):
    """No server could be reached before the delivery would expire: the job may
    already be another worker's."""


class EventPublisher:
    """Streams events to the server and re-sends them on a new stream after a failure.

    Producers call ``publish``; ``end`` says no more will come. ``run`` returns
    once the server acknowledged every event (the stream's response), or raises
    PublishFailed when it cannot: a fatal error, ``MAX_ATTEMPTS`` failures in a
    row that a server answered, or no server reached before ``held_until()`` (the
    time on trio's clock when the delivery would expire; without it, until
    cancelled). While it waits to try again it keeps taking events, so that the
    job's process runs on, keeping them in ``spool_dir`` past the memory bound.
    Events that had to be sent again but could not be kept are counted in
    ``lost_events``, and a line in the job's output marks where they were; the
    server drops the duplicates a re-send makes.
    """

    def __init__(
        self,
        client: AirunnerClient,
        task_token: str,
        *,
        retain_bytes: int = RETAIN_BYTES,
        spool_dir: Path | None = None,
        spool_bytes: int = SPOOL_BYTES,
        held_until: Callable[[], float] | None = None,
    ) -> None:
        self._client = client
        self._held_until = held_until
        self._token = task_token
        self._send, self._receive = trio.open_memory_channel[JobEvent](INPUT_BUFFER)
        self._kept = KeptEvents(retain_bytes, spool_dir, spool_bytes)
        self.lost_events = 0

    async def publish(self, event: JobEvent) -> None:
        await self._send.send(event)

    def end(self) -> None:
        self._send.close()

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async with self._receive:
            try:
                await self._publish()
            finally:
                self._kept.close()

    async def _publish(self) -> None:
        answered_failures = 0
        backoff = BACKOFF_INITIAL_SECONDS
        while True:
            try:
                await self._stream_once()
            except ConnectError as e:
                if e.code in FATAL_CODES:
                    raise PublishFailed(f"the server refused the events: {e.message}") from e
                if e.code != Code.UNAVAILABLE:
                    answered_failures += 1
                if answered_failures >= MAX_ATTEMPTS:
                    raise PublishFailed(
                        f"could not publish events after {answered_failures} attempts: {e.message}"
                    ) from e
                left = (
                    math.inf
                    if self._held_until is None
                    else self._held_until() - trio.current_time()
                )
                if left <= 0:
                    raise DeliveryExpired(
                        f"could not publish events before the delivery expired: {e.message}"
                    ) from e
                wait = min(backoff, left)
                log.warning("event stream failed (%s); retrying in %.1f s", e.message, wait)
                await self._keep_taking(wait)
                backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)
                continue
            self._kept.clear()
            return

    async def _keep_taking(self, seconds: float) -> None:
        """Wait ``seconds``, keeping the events published meanwhile (past the
        memory bound in the spool), so that their producer runs on."""
        with trio.move_on_after(seconds):
            async for event in self._receive:
                self._kept.keep(event, encoded_size(event))
            await trio.sleep_forever()

    async def _stream_once(self) -> None:
        send, receive = trio.open_memory_channel[PublishJobEventsRequest](1)
        failures: list[ConnectError] = []

        async def call() -> None:
            try:
                await self._client.publish_job_events(receive)
            except ConnectError as e:
                failures.append(e)
                nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            async with send:
                # The token first, alone: the server counts the delivery as taken
                # up at once, however long the checkout before the first event.
                await send.send(PublishJobEventsRequest(task_token=self._token))
                self.lost_events += self._kept.newly_lost()
                for message in _messages(self._kept.events()):
                    await send.send(PublishJobEventsRequest(events=message))
                async for event in self._receive:
                    # The request's encoding is connectrpc's; an event's size
                    # here is a bound just over its encoded size (``encoded_size``).
                    events = [event]
                    size = self._retain(event)
                    while size < MESSAGE_BYTES:
                        try:
                            more = self._receive.receive_nowait()
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                        events.append(more)
                        size += self._retain(more)
                    await send.send(PublishJobEventsRequest(events=events))
        if failures:
            raise failures[0]

    def _retain(self, event: JobEvent) -> int:
        """Keep ``event`` for re-sending (in memory, spooled, or as a gap); its size."""
        size = encoded_size(event)
        self._kept.keep(event, size)
        return size


def encoded_size(event: JobEvent) -> int:
    """At least the size of ``event`` encoded, without encoding it for an output batch.

    An output batch's bytes are its items' output, each with framing of at most
    ``ITEM_FRAMING_BYTES``, and fields of at most ``EVENT_FRAMING_BYTES`` around
    them; measuring it costs no copy of the output (the events come from this
    worker's batcher: no unknown fields). Other events are small and encoded.
    """
    data = event.event_data
    if data is None or data.field != "output_batch":
        return len(event.to_binary())
    outputs = data.value.outputs
    return (
        EVENT_FRAMING_BYTES
        + sum(len(item.output) for item in outputs)
        + (ITEM_FRAMING_BYTES * len(outputs))
    )


def _messages(events: Iterable[tuple[JobEvent, int]]) -> Iterator[list[JobEvent]]:
    """Events and their sizes as request messages of about MESSAGE_BYTES each."""
    message: list[JobEvent] = []
    size = 0
    for event, event_size in events:
        if size >= MESSAGE_BYTES:
            yield message
            message, size = [], 0
        message.append(event)
        size += event_size
    if message:
        yield message
