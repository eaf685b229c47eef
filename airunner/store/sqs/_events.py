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

import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import trio

from airunner import telemetry
from airunner.actors import TAIL_INTERVAL_SECONDS, EventTail, EventWriter
from airunner.api.job.v1.job_pb import JobEvent
from airunner.aws import AwsClients
from airunner.store import EventQuery, EventStream, TaskToken, last_sequence_of, rebased, rules
from airunner.store.rules import OutputLedger
from airunner.wakeup import KeyedWakeup

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


class SQSEvents:
    """The events half of the SQS store.

    Args:
        aws: Open DynamoDB client (and SQS, unused here).
        jobs_table: The jobs table (the event tail reads jobs' states).
        events_table: The events table.
        events_ttl_days: Days events are kept (DynamoDB TTL); 0 keeps them.
        tail_interval: Seconds between looks for news that other replicas stored.
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
        tail_interval: float = TAIL_INTERVAL_SECONDS,
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
        # Wakes this replica's subscribers of a job when it changes.
        self.changes = KeyedWakeup[str]()
        self.writer = EventWriter(aws.dynamodb, events_table, key_attributes=schema.EVENTS_KEY)
        self.tail = EventTail(self._news, self.changes, interval=tail_interval)

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
        delivery = self._delivery(token, job)
        if not events:
            return
        async with delivery.lock:
            new = sorted((rebased(event, base) for event in events), key=lambda e: e.sequence)
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
            count = await self._write(token.job_id, stored)
            delivery.output = output
            delivery.high_water = max(delivery.high_water, high_water)
        telemetry.events_persisted.add(count, {"queue": token.queue})

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
        return await self._write(job_id, [(event, output) for event in events])

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
        self.changes.wake(job_id)
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
        try:
            with self.tail.watching(job_id):
                yield _Subscription(self, job_id, query)
        finally:
            telemetry.streams_active.add(-1)

    # The event tail's look.

    async def _news(self, job_ids: Sequence[str]) -> dict[str, tuple[int, bool]]:
        """Per job, its newest stored sequence and whether it is final.

        Raises:
            ClientError, BotoCoreError: as AWS answered; the tail looks again later.
        """
        final = await self._final_jobs(job_ids)
        newest: dict[str, int] = {}
        limiter = trio.CapacityLimiter(CONCURRENT_QUERIES)

        async def read_newest(job_id: str) -> None:
            async with limiter:
                newest[job_id] = await self._newest_sequence(job_id)

        async with trio.open_nursery() as queries:
            for job_id in job_ids:
                queries.start_soon(read_newest, job_id)
        return {job_id: (newest[job_id], job_id in final) for job_id in job_ids}

    async def _final_jobs(self, job_ids: Sequence[str]) -> set[str]:
        """Those of the jobs in a final state."""
        final: set[str] = set()
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
                    if schema.is_final(item):
                        final.add(item["job_id"]["S"])
                unprocessed = response.get("UnprocessedKeys", {}).get(self._jobs_table)
                keys = unprocessed["Keys"] if unprocessed else []
        return final

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
    """A subscriber that reads the events table from where it left off.

    It reads again when the job changes; once the job is final and nothing is
    left to read, it ends.
    """

    def __init__(self, events: SQSEvents, job_id: str, query: EventQuery) -> None:
        self._events = events
        self._job_id = job_id
        self._query = query
        self._after = query.from_sequence - 1
        self._ready: list[JobEvent] = []
        self._ended = False

    async def receive(self) -> JobEvent | None:
        while not self._ready:
            if self._ended:
                return None
            # Taken before reading, so that a change while we read is not missed.
            changed = self._events.changes.next_wake(self._job_id)
            # Once the job is final no event can follow: read what is left, then end.
            final = await self._events.is_final(self._job_id)
            events = await self._events.events_after(self._job_id, self._after)
            if events:
                self._after = events[-1].sequence
                self._ready = [event for event in events if self._query.matches(event)]
            elif final:
                self._ended = True
            else:
                await changed.wait()
        return self._ready.pop(0)
