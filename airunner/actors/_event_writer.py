"""EventWriter: stores the events of every job in as few BatchWriteItem calls as it can."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio
from botocore.exceptions import BotoCoreError, ClientError

from airunner import telemetry

from ._batch_call import AwsCallFailed, BatchRequest, answering

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient

log = logging.getLogger(__name__)

# DynamoDB's limits for one BatchWriteItem call.
BATCH_ITEMS = 25
BATCH_BYTES = 16 * 1024 * 1024
# Unprocessed items are retried this many times in all, with exponential backoff.
ATTEMPTS = 3
BACKOFF_SECONDS = 0.1
# Requests waiting for the writer; a publisher beyond these waits to hand its events over.
BACKLOG = 32
# BatchWriteItem calls of one round in flight at once.
CONCURRENT_CALLS = 4


@dataclass(eq=False)
class _Write(BatchRequest):
    items: Sequence[dict[str, Any]]


class EventWriter:
    """Coalesces the events of concurrent publishers, across jobs, into BatchWriteItem calls.

    While one round of calls is in flight, the next publishers' events gather
    in a small channel; the next round takes them all at once. Each publisher
    is answered when the calls holding its events are done.

    Args:
        dynamodb: The client.
        table: The table the items go to.
        key_attributes: The names of the table's key attributes: two items with
            one key never share a call (DynamoDB refuses that), the later wins.
    """

    name = "event writer"
    restartable = True

    def __init__(
        self, dynamodb: DynamoDBClient, table: str, *, key_attributes: Sequence[str]
    ) -> None:
        self._dynamodb = dynamodb
        self._table = table
        self._key_attributes = tuple(key_attributes)
        self._send, self._receive = trio.open_memory_channel[_Write](BACKLOG)

    async def write(self, items: Sequence[dict[str, Any]]) -> None:
        """Store the items (events table items); return once they are stored.

        Raises:
            AwsCallFailed: some of them could not be stored; writing them all
                again is safe (an item with the same key replaces the first).

        Cancellation:
            Safe: items already handed over are still written.
        """
        request = _Write(items)
        await self._send.send(request)
        await request.outcome()

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            requests = [await self._receive.receive()]
            while True:
                try:
                    requests.append(self._receive.receive_nowait())
                except trio.WouldBlock:
                    break
            with answering(requests, self.name):
                await self._write_round(requests)

    async def _write_round(self, requests: list[_Write]) -> None:
        # One item per key: BatchWriteItem refuses two puts of one key in a call,
        # and the later put is the one to keep.
        owners: dict[tuple[str, ...], tuple[dict[str, Any], list[_Write]]] = {}
        for request in requests:
            for item in request.items:
                key = tuple(str(item[name]) for name in self._key_attributes)
                earlier = owners.get(key)
                owners[key] = (item, (earlier[1] if earlier else []) + [request])
        limiter = trio.CapacityLimiter(CONCURRENT_CALLS)
        async with trio.open_nursery() as calls:
            for chunk in _chunks(list(owners.values())):
                calls.start_soon(self._write_chunk, chunk, limiter)

    async def _write_chunk(
        self, chunk: list[tuple[dict[str, Any], list[_Write]]], limiter: trio.CapacityLimiter
    ) -> None:
        # The call serves many publishers: its span links to each of theirs.
        links = telemetry.links(w.origin for _, writers in chunk for w in writers)
        async with limiter:
            with telemetry.tracer.start_as_current_span("store events", links=links):
                error = await self._put([item for item, _ in chunk])
        for _, writers in chunk:
            for request in writers:
                request.error = request.error or error

    async def _put(self, items: list[dict[str, Any]]) -> AwsCallFailed | None:
        pending: list[Any] = [{"PutRequest": {"Item": item}} for item in items]
        for attempt in range(ATTEMPTS):
            if attempt:
                telemetry.dynamodb_batch_retries.add(1, {"operation": "BatchWriteItem"})
                await trio.sleep(BACKOFF_SECONDS * 2 ** (attempt - 1))
            try:
                response = await self._dynamodb.batch_write_item(
                    RequestItems={self._table: pending}
                )
            except (ClientError, BotoCoreError) as e:
                log.warning("BatchWriteItem of %d events failed: %s", len(pending), e)
                return AwsCallFailed.from_error(e)
            pending = list(response.get("UnprocessedItems", {}).get(self._table, []))
            if not pending:
                return None
        log.warning("%d events were not stored after %d attempts", len(pending), ATTEMPTS)
        return AwsCallFailed(
            "UnprocessedItems", f"{len(pending)} events were not stored after {ATTEMPTS} attempts"
        )


def _chunks(
    entries: list[tuple[dict[str, Any], list[_Write]]],
) -> list[list[tuple[dict[str, Any], list[_Write]]]]:
    """Entries in groups that fit one BatchWriteItem call (items and bytes)."""
    chunks: list[list[tuple[dict[str, Any], list[_Write]]]] = []
    size = 0
    for entry in entries:
        item_size = _size(entry[0])
        if not chunks or len(chunks[-1]) == BATCH_ITEMS or size + item_size > BATCH_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(entry)
        size += item_size
    return chunks


def _size(item: dict[str, Any]) -> int:
    """An item's size as DynamoDB counts it, near enough: names plus values."""
    total = 0
    for name, value in item.items():
        ((_, content),) = value.items()
        total += len(name) + len(content)
    return total
