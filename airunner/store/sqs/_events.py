"""Job events on DynamoDB: publishing, replay, and subscribers that follow a job live.

Events are items of the events table, keyed by job and sequence (``_schema``).
The events of a job's later deliveries are stored after those of its earlier
ones (``rebased``), so a job has one increasing log however often it ran.

Subscribers read the table themselves, from the sequence after the last one
they returned, and read again when the job changes. The table, not a buffer,
keeps the order: there is no gap or duplicate between history and live events,
and a slow subscriber holds no memory. A change is known at once when this
replica stores the job's events or finishes it, and from the ``EventTail`` when
another replica does.

The output cap (``rules.cap_output``) counts a job's output over all its runs.
Every event item records the count as of that event (and where the output was
cut, once it was), so that whichever replica receives a delivery's events can
go on counting. A replica keeps the count of each delivery publishing to it in
memory, with the highest sequence it has seen: the first publish of a
delivery starts from the count the job item got when the delivery began, and a
replica that finds a delivery already under way (its stream moved here from
another replica), or sees its sequences jump past what it has seen, reads the
job's last event item once. Events at or below the highest sequence seen are
re-sends: written again (cut where the output was cut), not counted again.
"""

from __future__ import annotations

import bisect
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any, cast

import trio

from airunner import telemetry
from airunner.actors import DEFAULT_TAIL_PACE, EventTail, EventWriter, TailPace
from airunner.api.job.v1.job_pb import JobEvent, JobState
from airunner.aws import AwsClients
from airunner.store import (
    FINAL_STATES,
    EventQuery,
    EventStream,
    StoreError,
    TaskToken,
    last_sequence_of,
    rebased,
    rules,
)
from airunner.store.rules import OutputLedger
from airunner.wakeup import Wakeup

from . import _schema as schema
from ._aws_errors import aws_errors

log = logging.getLogger(__name__)

# BatchGetItem's limit of keys per call.
BATCH_KEYS = 100
# Reads of keys DynamoDB left unprocessed; what is still left waits for the next look.
BATCH_GET_ATTEMPTS = 3
# Queries of one look in flight at once.
CONCURRENT_QUERIES = 8
# Deliveries whose output count a replica keeps in memory; one it forgot costs a
# Query when it next publishes here.
KEPT_DELIVERIES = 4096
# The newest events a replica keeps of each job its subscribers follow (by
# output bytes, roughly); a subscriber further behind reads the table.
FEED_BYTES = 1024 * 1024
# What an event counts toward FEED_BYTES besides its output.
EVENT_OVERHEAD_BYTES = 64


@dataclass(eq=False)
class _DeliveryOutput:
    """What this replica knows of one delivery's output."""

    attempt: int
    output: OutputLedger
    # The highest sequence (as stored) seen from this delivery, or known stored.
    high_water: int
    # False until the count is known (from the job item or the last event item).
    known: bool
    lock: trio.Lock = field(default_factory=trio.Lock)


@dataclass(eq=False)
class _Feed:
    """The stored events of one job that this replica's subscribers follow,
    shared by them: filled by what this replica writes and, when another
    replica wrote, by one read of the table for all of them.

    Every stored event of the job with a sequence in (``start``, ``high``] is in
    ``events``, in order (None until the first read). ``stale`` says the table
    may hold more (or the job may have ended): the next subscriber to look
    reads it for everyone.
    """

    start: int | None = None
    high: int | None = None
    events: list[JobEvent] = field(default_factory=list)
    size: int = 0
    final: bool = False
    stale: bool = True
    subscribers: int = 0
    lock: trio.Lock = field(default_factory=trio.Lock)
    changed: Wakeup = field(default_factory=Wakeup)

    def add(self, events: Sequence[JobEvent], high: int) -> None:
        """Events that follow ``self.high`` directly, and the new ``high``."""
        for event in events:
            self.events.append(event)
            self.size += _feed_size(event)
        self.high = high
        dropped = 0
        while self.size > FEED_BYTES and dropped < len(self.events) - 1:
            self.size -= _feed_size(self.events[dropped])
            self.start = self.events[dropped].sequence
            dropped += 1
        del self.events[:dropped]

    def after(self, sequence: int) -> list[JobEvent]:
        """The events kept with a sequence past ``sequence``."""
        first = bisect.bisect_right(self.events, sequence, key=lambda event: event.sequence)
        return self.events[first:]


def _feed_size(event: JobEvent) -> int:
    return rules.output_bytes(event) + EVENT_OVERHEAD_BYTES


class SQSEvents:
    """The events half of the SQS store.

    Args:
        aws: Open DynamoDB client (and SQS, unused here).
        jobs_table: The jobs table (the event tail reads jobs' states).
        events_table: The events table.
        events_ttl_days: Days events are kept (DynamoDB TTL); 0 keeps them.
        tail_pace: How often the event tail looks for news that other replicas stored.
        is_final: Whether a job is in a final state, read consistently.
        max_output_bytes: Output bytes stored per job, over all its runs.
    """

    def __init__(
        self,
        aws: AwsClients,
        *,
        jobs_table: str,
        events_table: str,
        events_ttl_days: int,
        tail_pace: TailPace = DEFAULT_TAIL_PACE,
        is_final: Callable[[str], Awaitable[bool]],
        max_output_bytes: int = rules.DEFAULT_MAX_OUTPUT_BYTES,
    ) -> None:
        self._dynamodb = aws.dynamodb
        self._jobs_table = jobs_table
        self._table = events_table
        self.table = events_table
        self._ttl_seconds = events_ttl_days * 86400
        self.is_final = is_final
        self._max_output_bytes = max_output_bytes
        # By job id, least recently published first.
        self._deliveries: OrderedDict[str, _DeliveryOutput] = OrderedDict()
        # What this replica's subscribers of each job follow, by job id.
        self._feeds: dict[str, _Feed] = {}
        self.writer = EventWriter(aws.dynamodb, events_table, key_attributes=schema.EVENTS_KEY)
        self.tail = EventTail(self._news, self._on_news, pace=tail_pace)

    async def check_resources(self) -> None:
        """Raises ClientError or BotoCoreError if the events table is missing."""
        await self._dynamodb.describe_table(TableName=self._table)

    async def publish(
        self, token: TaskToken, job: Mapping[str, Any], events: Sequence[JobEvent]
    ) -> None:
        """Store the events of the delivery behind ``token`` (``job``, its item as
        read when the token was checked), after its ``sequence_base``, output capped.

        The caller checked them (``rules.check_events``) before it took the delivery up.
        """
        telemetry.events_publish.add(len(events), {"queue": token.queue})
        base = schema.sequence_base(job)
        # ``job`` may be as read before this publish took the delivery up.
        run = schema.runs_of(job) + (0 if schema.taken_up(job) else 1)
        delivery = self._delivery(token, job)
        if not events:
            return
        async with delivery.lock:
            new = sorted((rebased(e, base, run) for e in events), key=lambda e: e.sequence)
            first_new = next((e.sequence for e in new if e.sequence > delivery.high_water), None)
            if not delivery.known or (
                first_new is not None and first_new > delivery.high_water + 1
            ):
                await self._learn_output(token.job_id, delivery, base)
            # Counted on a copy: if the write fails, the worker sends the events again.
            output = replace(delivery.output)
            high_water = delivery.high_water
            stored: list[tuple[JobEvent, OutputLedger]] = []
            for event in new:
                if event.sequence <= high_water:
                    kept = (
                        rules.trim_output(event, output.truncated_at)
                        if output.truncated_at is not None
                        else event
                    )
                    if kept is not None:
                        stored.append((kept, replace(output)))
                else:
                    for kept in rules.cap_output(event, output, self._max_output_bytes):
                        stored.append((kept, replace(output)))
                high_water = max(high_water, last_sequence_of(event))
            follows = delivery.high_water
            count = await self._write(token.job_id, stored)
            delivery.output = output
            delivery.high_water = max(delivery.high_water, high_water)
            self._written_here(
                token.job_id,
                [event for event, _ in stored if event.sequence > follows],
                follows,
                delivery.high_water,
            )
        telemetry.events_persisted.add(count, {"queue": token.queue})

    def _written_here(
        self, job_id: str, events: Sequence[JobEvent], follows: int, high: int
    ) -> None:
        """A delivery publishing here stored ``events``: every stored event of
        the job up to ``follows`` was known to it, and up to ``high`` is now.
        Its subscribers here get them without a read, if they had everything
        up to ``follows``; else they read the table."""
        feed = self._feeds.get(job_id)
        if feed is None:
            return
        if feed.high == follows and not feed.stale:
            # A sequence given twice was stored once, the later.
            written = {event.sequence: event for event in events}
            feed.add([written[sequence] for sequence in sorted(written)], high)
        else:
            feed.stale = True
        feed.changed.wake()

    def changed(self, job_id: str) -> None:
        """The job changed in a way its stored events or state show (events the
        store wrote itself, an end): its subscribers here read the table."""
        feed = self._feeds.get(job_id)
        if feed is not None:
            feed.stale = True
            feed.changed.wake()

    def _on_news(self, job_id: str, summary: Hashable) -> None:
        """The event tail's news of a job: its newest stored sequence and
        whether it is final. Only what this replica does not know yet makes its
        subscribers read the table."""
        feed = self._feeds.get(job_id)
        newest, final = cast(tuple[int, bool], summary)
        if feed is None or feed.high is None:
            return
        if newest > feed.high or (final and not feed.final):
            self.changed(job_id)

    async def refresh(self, job_id: str, feed: _Feed) -> None:
        """Bring a stale feed up to date: one read of the table for all of the
        job's subscribers here."""
        if feed.stale or feed.lock.locked():
            # A read under way is waited for.
            async with feed.lock:
                # Another subscriber may have read it meanwhile.
                if feed.stale:
                    await self._read(job_id, feed)

    async def _read(self, job_id: str, feed: _Feed, final: bool | None = None) -> None:
        """Read what the feed may miss (call with its lock held). ``final`` is
        the job's state as read just before, if it was; else it is read."""
        # A change while this reads makes it stale again.
        feed.stale = False
        try:
            # Read first: once the job is final, no event can follow.
            if final is None:
                final = await self.is_final(job_id)
            if feed.high is None:
                feed.start = feed.high = await self._last_sequence(job_id)
                events = []
            else:
                events = await self.events_after(job_id, feed.high)
        except BaseException:
            feed.stale = True
            raise
        # What this replica wrote meanwhile is in the feed already.
        events = [event for event in events if event.sequence > feed.high]
        if events:
            feed.add(events, events[-1].sequence)
            # Final, maybe, but only a read that finds nothing more says so.
            feed.stale = feed.stale or final
        elif final and not feed.final:
            feed.final = True
        else:
            return
        feed.changed.wake()

    def forget(self, job_id: str) -> None:
        """The job is final: no more of its output will be counted here."""
        self._deliveries.pop(job_id, None)

    def _delivery(self, token: TaskToken, job: Mapping[str, Any]) -> _DeliveryOutput:
        """What this replica knows of the delivery's output; when it knows nothing
        yet and the delivery was not taken up before this publish, no event of it
        is stored yet, and the job item says how much output the job had."""
        delivery = self._deliveries.get(token.job_id)
        if delivery is None or delivery.attempt != token.attempt:
            first = not schema.taken_up(job)
            delivery = _DeliveryOutput(
                attempt=token.attempt,
                output=schema.output_ledger(job),
                high_water=schema.sequence_base(job),
                known=first,
            )
            self._deliveries[token.job_id] = delivery
            while len(self._deliveries) > KEPT_DELIVERIES:
                self._deliveries.popitem(last=False)
        self._deliveries.move_to_end(token.job_id)
        return delivery

    async def _learn_output(self, job_id: str, delivery: _DeliveryOutput, base: int) -> None:
        """Read the count from the job's last event item: another replica may
        have stored events of this delivery."""
        last = await self.last_event(job_id)
        if last is not None:
            event, output = last
            delivery.output = output
            delivery.high_water = max(delivery.high_water, base, last_sequence_of(event))
        delivery.known = True

    async def store(self, job_id: str, events: Sequence[JobEvent], output: OutputLedger) -> int:
        """Store events the store made, whose sequences are final (past earlier
        runs'), recording ``output`` with them; wake subscribers.

        Returns how many items that made (a sequence given twice is one).
        """
        count = await self._write(job_id, [(event, output) for event in events])
        self.changed(job_id)
        return count

    def item(self, job_id: str, event: JobEvent, output: OutputLedger) -> dict[str, Any]:
        """The item that stores an event, stamped now if it has no timestamp, with
        its TTL; for a write of the caller's own (in a transaction, say)."""
        now_ms = schema.now_ms()
        expires = now_ms // 1000 + self._ttl_seconds if self._ttl_seconds else None
        if event.timestamp is None:
            event.timestamp = schema.timestamp(now_ms)
        return schema.event_item(job_id, event, expires, output)

    async def _write(self, job_id: str, events: Sequence[tuple[JobEvent, OutputLedger]]) -> int:
        """Store events, each with the job's output as of it; wake subscribers."""
        if not events:
            return 0
        items: dict[int, dict[str, Any]] = {}
        for event, output in events:
            # A sequence sent twice in one call is one item, the later.
            items[event.sequence] = self.item(job_id, event, output)
        with aws_errors():
            await self.writer.write(list(items.values()))
        return len(items)

    async def last_event(self, job_id: str) -> tuple[JobEvent, OutputLedger] | None:
        """The job's last stored event, if any, and the job's output as of it."""
        with aws_errors():
            response = await self._dynamodb.query(
                TableName=self._table,
                KeyConditionExpression="job_id = :job",
                ExpressionAttributeValues={":job": {"S": job_id}},
                ScanIndexForward=False,
                Limit=1,
                ConsistentRead=True,
            )
        items = response.get("Items", [])
        if not items:
            return None
        return schema.event_from_item(items[0]), schema.output_ledger(items[0])

    async def events_after(self, job_id: str, sequence: int) -> list[JobEvent]:
        """The job's stored events after ``sequence``, in order, every page."""
        paginator = self._dynamodb.get_paginator("query")
        pages = paginator.paginate(
            TableName=self._table,
            KeyConditionExpression="job_id = :job AND #sequence > :after",
            ExpressionAttributeNames={"#sequence": "sequence"},
            ExpressionAttributeValues={":job": {"S": job_id}, ":after": {"N": str(sequence)}},
            ConsistentRead=True,
        )
        events: list[JobEvent] = []
        with aws_errors():
            async for page in pages:
                events.extend(schema.event_from_item(item) for item in page.get("Items", []))
        return events

    @asynccontextmanager
    async def subscribe(self, job_id: str, query: EventQuery) -> AsyncIterator[EventStream]:
        """Follow the job's events (it must exist: the caller checked)."""
        telemetry.streams_active.add(1)
        feed = self._feeds.setdefault(job_id, _Feed())
        feed.subscribers += 1
        try:
            with self.tail.watching(job_id):
                yield _Subscription(self, job_id, query, feed)
        finally:
            telemetry.streams_active.add(-1)
            feed.subscribers -= 1
            if not feed.subscribers:
                del self._feeds[job_id]

    # The event tail's look.

    async def _news(self, job_ids: Sequence[str]) -> dict[str, tuple[Hashable, bool]]:
        """Per job, its newest stored sequence and whether it is final (the
        summary), and whether it is running.

        Raises:
            ClientError, BotoCoreError: as AWS answered; the tail looks again later.
        """
        states = await self._states(job_ids)
        newest: dict[str, int] = {}
        limiter = trio.CapacityLimiter(CONCURRENT_QUERIES)

        async def look_at(job_id: str) -> None:
            async with limiter:
                feed = self._feeds.get(job_id)
                if feed is None or feed.high is None:
                    newest[job_id] = await self._newest_sequence(job_id)
                    return
                # The look reads the job's new events for its subscribers here,
                # with the state read just before.
                async with feed.lock:
                    try:
                        await self._read(job_id, feed, states.get(job_id) in FINAL_STATES)
                    except StoreError as e:
                        log.warning("could not read the events of job %s: %s", job_id, e)
                newest[job_id] = feed.high

        async with trio.open_nursery() as queries:
            for job_id in job_ids:
                queries.start_soon(look_at, job_id)
        news: dict[str, tuple[Hashable, bool]] = {}
        for job_id in job_ids:
            state = states.get(job_id)
            final = state in FINAL_STATES
            news[job_id] = ((newest[job_id], final), state == JobState.RUNNING)
        return news

    async def _states(self, job_ids: Sequence[str]) -> dict[str, JobState]:
        """The stored states of those of the jobs that exist."""
        states: dict[str, JobState] = {}
        for start in range(0, len(job_ids), BATCH_KEYS):
            keys: Any = [schema.job_key(job_id) for job_id in job_ids[start : start + BATCH_KEYS]]
            for _ in range(BATCH_GET_ATTEMPTS):
                if not keys:
                    break
                response = await self._dynamodb.batch_get_item(
                    RequestItems={
                        self._jobs_table: {
                            "Keys": keys,
                            "ProjectionExpression": "job_id, #state",
                            "ExpressionAttributeNames": {"#state": "state"},
                            "ConsistentRead": True,
                        }
                    }
                )
                for item in response.get("Responses", {}).get(self._jobs_table, []):
                    states[item["job_id"]["S"]] = schema.stored_state(item)
                unprocessed = response.get("UnprocessedKeys", {}).get(self._jobs_table)
                keys = unprocessed["Keys"] if unprocessed else []
        return states

    async def _last_sequence(self, job_id: str) -> int:
        with aws_errors():
            return await self._newest_sequence(job_id)

    async def _newest_sequence(self, job_id: str) -> int:
        response = await self._dynamodb.query(
            TableName=self._table,
            KeyConditionExpression="job_id = :job",
            ExpressionAttributeValues={":job": {"S": job_id}},
            ProjectionExpression="#sequence",
            ExpressionAttributeNames={"#sequence": "sequence"},
            ScanIndexForward=False,
            Limit=1,
            ConsistentRead=True,
        )
        items = response.get("Items", [])
        return schema.sequence_of(items[0]) if items else 0


class _Subscription:
    """A subscriber: what it has not returned yet, from the job's feed on this
    replica, or from the table while it is behind what the feed keeps (its
    history, or a reader that fell far behind). It ends once the job is final
    and nothing is left to return."""

    def __init__(self, events: SQSEvents, job_id: str, query: EventQuery, feed: _Feed) -> None:
        self._events = events
        self._job_id = job_id
        self._query = query
        self._feed = feed
        self._after = query.from_sequence - 1
        self._ready: list[JobEvent] = []
        self._ended = False

    async def receive(self) -> JobEvent | None:
        feed = self._feed
        while not self._ready:
            if self._ended:
                return None
            # Taken before looking, so that a change while we look is not missed.
            changed = feed.changed.next_wake()
            await self._events.refresh(self._job_id, feed)
            assert feed.start is not None
            if self._after < feed.start:
                events = await self._events.events_after(self._job_id, self._after)
                # Nothing after it stored at all: the feed starts where it is.
                self._after = events[-1].sequence if events else max(self._after, feed.start)
            else:
                events = feed.after(self._after)
                if events:
                    self._after = events[-1].sequence
                elif feed.final:
                    self._ended = True
                    continue
                else:
                    await changed.wait()
                    continue
            self._ready = [event for event in events if self._query.matches(event)]
        return self._ready.pop(0)
