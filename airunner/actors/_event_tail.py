"""EventTail: brings news of jobs that other replicas run to this replica's subscribers."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import trio
from botocore.exceptions import BotoCoreError, ClientError

from airunner.api.job.v1.job_pb import JobState

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient

log = logging.getLogger(__name__)

# How often the tables are read for the jobs somebody here watches.
INTERVAL_SECONDS = 1.0
# BatchGetItem's limit of keys per call.
BATCH_KEYS = 100
# Queries of one look in flight at once.
CONCURRENT_QUERIES = 8
# Reads of keys DynamoDB left unprocessed; what is still left waits for the next look.
BATCH_GET_ATTEMPTS = 3

_FINAL_STATE_VALUES = frozenset(
    {int(JobState.COMPLETED), int(JobState.FAILED), int(JobState.CANCELLED)}
)


class EventTail:
    """Watches the jobs this replica's subscribers follow, and wakes them on news.

    Events and completions stored by this replica wake its subscribers at once
    (the store does that); those stored by another replica reach no one here
    but through this actor. While somebody watches, it reads every interval,
    per watched job, the newest event's sequence and whether the job is final,
    and calls ``wake(job_id)`` when either differs from its last look (or on
    its first look at the job, which costs a subscriber one needless read at
    most). A subscriber then reads the events itself, from where it left off.
    With nobody watching it reads nothing.
    """

    name = "event tail"
    restartable = True

    def __init__(
        self,
        dynamodb: DynamoDBClient,
        *,
        jobs_table: str,
        events_table: str,
        wake: Callable[[str], None],
        interval: float = INTERVAL_SECONDS,
    ) -> None:
        self._dynamodb = dynamodb
        self._jobs_table = jobs_table
        self._events_table = events_table
        self._wake = wake
        self._interval = interval
        self._watchers: dict[str, int] = {}
        self._seen: dict[str, tuple[int, bool]] = {}
        self._watched = trio.Event()

    @contextmanager
    def watching(self, job_id: str) -> Iterator[None]:
        """Look at ``job_id`` for as long as the context lasts."""
        self._watchers[job_id] = self._watchers.get(job_id, 0) + 1
        self._watched.set()
        try:
            yield
        finally:
            self._watchers[job_id] -= 1
            if not self._watchers[job_id]:
                del self._watchers[job_id]
                self._seen.pop(job_id, None)

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            while not self._watchers:
                self._watched = trio.Event()
                await self._watched.wait()
            try:
                await self._look(list(self._watchers))
            except (ClientError, BotoCoreError) as e:
                # The next look tries again; subscribers keep what they have.
                log.warning("%s could not read the tables: %s", self.name, e)
            await trio.sleep(self._interval)

    async def _look(self, job_ids: list[str]) -> None:
        final = await self._final_jobs(job_ids)
        newest: dict[str, int] = {}
        limiter = trio.CapacityLimiter(CONCURRENT_QUERIES)

        async def read_newest(job_id: str) -> None:
            async with limiter:
                newest[job_id] = await self._newest_sequence(job_id)

        async with trio.open_nursery() as queries:
            for job_id in job_ids:
                queries.start_soon(read_newest, job_id)
        for job_id in job_ids:
            if job_id not in self._watchers:
                continue
            now = (newest[job_id], job_id in final)
            if self._seen.get(job_id) != now:
                self._seen[job_id] = now
                self._wake(job_id)

    async def _final_jobs(self, job_ids: list[str]) -> set[str]:
        """Those of the jobs in a final state."""
        final: set[str] = set()
        for start in range(0, len(job_ids), BATCH_KEYS):
            keys: Any = [
                {"job_id": {"S": job_id}} for job_id in job_ids[start : start + BATCH_KEYS]
            ]
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
                    if int(item["state"]["N"]) in _FINAL_STATE_VALUES:
                        final.add(item["job_id"]["S"])
                unprocessed = response.get("UnprocessedKeys", {}).get(self._jobs_table)
                keys = unprocessed["Keys"] if unprocessed else []
        return final

    async def _newest_sequence(self, job_id: str) -> int:
        response = await self._dynamodb.query(
            TableName=self._events_table,
            KeyConditionExpression="job_id = :job",
            ExpressionAttributeValues={":job": {"S": job_id}},
            ProjectionExpression="#sequence",
            ExpressionAttributeNames={"#sequence": "sequence"},
            ScanIndexForward=False,
            Limit=1,
            ConsistentRead=True,
        )
        items = response.get("Items", [])
        return int(items[0]["sequence"]["N"]) if items else 0
