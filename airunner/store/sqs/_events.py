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
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

from airunner import telemetry
from airunner.actors import TAIL_INTERVAL_SECONDS, EventTail, EventWriter
from airunner.api.job.v1.job_pb import JobEvent
from airunner.aws import AwsClients
from airunner.store import EventQuery, EventStream, TaskToken, rebased
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


class SQSEvents:
    """The events half of the SQS store.

    Args:
        aws: Open DynamoDB client (and SQS, unused here).
        jobs_table: The jobs table (the event tail reads jobs' states).
        events_table: The events table.
        events_ttl_days: Days events are kept (DynamoDB TTL); 0 keeps them.
        tail_interval: Seconds between looks for news that other replicas stored.
        is_final: Whether a job is in a final state, read consistently.
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
    ) -> None:
        self._dynamodb = aws.dynamodb
        self._jobs_table = jobs_table
        self._table = events_table
        self._ttl_seconds = events_ttl_days * 86400
        self.is_final = is_final
        # Wakes this replica's subscribers of a job when it changes.
        self.changes = KeyedWakeup[str]()
        self.writer = EventWriter(aws.dynamodb, events_table, key_attributes=schema.EVENTS_KEY)
        self.tail = EventTail(self._news, self.changes, interval=tail_interval)

    async def check_resources(self) -> None:
        """Raises ClientError or BotoCoreError if the events table is missing."""
        await self._dynamodb.describe_table(TableName=self._table)

    async def publish(self, token: TaskToken, base: int, events: Sequence[JobEvent]) -> None:
        """Store the events of the delivery behind ``token``, after sequence ``base``.

        The caller checked them (``rules.check_events``) before it took the delivery up.
        """
        telemetry.events_publish.add(len(events), {"queue": token.queue})
        stored = await self.store(token.job_id, [rebased(event, base) for event in events])
        telemetry.events_persisted.add(stored, {"queue": token.queue})

    async def store(self, job_id: str, events: Sequence[JobEvent]) -> int:
        """Store events whose sequences are final (past earlier runs'); wake subscribers.

        Returns how many items that made (a sequence given twice is one).
        """
        if not events:
            return 0
        now_ms = schema.now_ms()
        expires = now_ms // 1000 + self._ttl_seconds if self._ttl_seconds else None
        items: dict[int, dict[str, Any]] = {}
        for event in events:
            if event.timestamp is None:
                event.timestamp = schema.timestamp(now_ms)
            # A sequence sent twice in one call is one item, the later.
            items[event.sequence] = schema.event_item(job_id, event, expires)
        with aws_errors():
            await self.writer.write(list(items.values()))
        self.changes.wake(job_id)
        return len(items)

    async def last_event(self, job_id: str) -> JobEvent | None:
        """The job's last stored event, if any."""
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
        return schema.event_from_item(items[0]) if items else None

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
