"""SQSJobStore: the JobStore on SQS and DynamoDB, made of its two halves and their actors.

``SQSJobs`` (``_jobs``) keeps the job lifecycle: the jobs table and the queues.
``SQSEvents`` (``_events``) keeps the events table and the subscribers. This
class checks a publisher's token against the job before its events are
stored, and wakes a job's subscribers when it finishes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from contextlib import asynccontextmanager

from airunner.actors import DEFAULT_TAIL_PACE, Actor, TailPace
from airunner.api.job.v1.job_pb import Job, JobEvent, JobParams, JobResult, JobState
from airunner.aws import AwsClients
from airunner.store import Delivery, EventQuery, EventStream, JobPage, TaskTokenSigner, rules

from . import _schema as schema
from ._events import SQSEvents
from ._jobs import SQSJobs


class SQSJobStore:
    """A JobStore on SQS queues and DynamoDB tables.

    Args:
        aws: Open SQS and DynamoDB clients.
        queue_urls: Queue name to SQS queue URL.
        jobs_table: The jobs table.
        events_table: The events table.
        default_visibility_timeout: Seconds a delivery stays invisible when the
            dequeuer does not say.
        token_secret: HMAC secret for task tokens, the same on every replica.
        events_ttl_days: Days events are kept (DynamoDB TTL); 0 keeps them.
        tail_pace: How often the event tail looks for news that other replicas stored.
        max_attempts: Runs a job may have unless it says otherwise.
        confirm_seconds: How long a delivery waits to be taken up.
        max_output_bytes: Output bytes stored per job, over all its runs.

    Call ``check_resources`` before ``actors``: it learns the queues' dead-letter
    queues, which have actors of their own.
    """

    def __init__(
        self,
        aws: AwsClients,
        *,
        queue_urls: Mapping[str, str],
        jobs_table: str,
        events_table: str,
        default_visibility_timeout: int,
        token_secret: bytes,
        events_ttl_days: int = 0,
        tail_pace: TailPace = DEFAULT_TAIL_PACE,
        max_attempts: int = rules.DEFAULT_MAX_ATTEMPTS,
        confirm_seconds: int = rules.CONFIRM_SECONDS,
        max_output_bytes: int = rules.DEFAULT_MAX_OUTPUT_BYTES,
    ) -> None:
        self._visibility = default_visibility_timeout
        self._events = SQSEvents(
            aws,
            jobs_table=jobs_table,
            events_table=events_table,
            events_ttl_days=events_ttl_days,
            tail_pace=tail_pace,
            is_final=self._job_is_final,
            max_output_bytes=max_output_bytes,
        )
        self._jobs = SQSJobs(
            aws,
            queue_urls=queue_urls,
            jobs_table=jobs_table,
            default_visibility_timeout=default_visibility_timeout,
            signer=TaskTokenSigner(token_secret),
            events=self._events,
            max_attempts=max_attempts,
            confirm_seconds=confirm_seconds,
        )

    async def check_resources(self) -> None:
        """Fail now, not at the first request, if a queue or table is missing.

        Raises:
            QueueUnusable: a queue (or its dead-letter queue), named, as AWS answered.
            ClientError, BotoCoreError: a table, as AWS answered.
        """
        await self._jobs.check_resources()
        await self._events.check_resources()

    @property
    def queues(self) -> Collection[str]:
        return self._jobs.queues

    def actors(self) -> Sequence[Actor]:
        return [
            *self._jobs.pollers.values(),
            *self._jobs.extenders.values(),
            *self._jobs.dead_letter_readers(),
            self._events.writer,
            self._events.tail,
        ]

    async def enqueue_job(self, request_id: str, queue: str, params: JobParams | None) -> Job:
        return await self._jobs.enqueue(request_id, queue, params)

    async def dequeue_job(
        self,
        queues: Sequence[str],
        visibility_timeout_seconds: int,
        *,
        deadline: float,
        worker_name: str = "",
    ) -> Delivery | None:
        return await self._jobs.dequeue(
            queues, visibility_timeout_seconds, deadline=deadline, worker_name=worker_name
        )

    async def release_job(self, task_token: str) -> None:
        await self._jobs.release(task_token)

    async def update_job(
        self, queue: str, task_token: str, visibility_timeout_seconds: int
    ) -> None:
        await self._jobs.update(queue, task_token, visibility_timeout_seconds)

    async def complete_job(self, task_token: str, result: JobResult | None) -> None:
        await self._jobs.complete(task_token, result)
        if result is not None:
            self._events.forget(result.job_id)
            self._events.changed(result.job_id)

    async def cancel_job(self, job_id: str, reason: str) -> Job:
        return await self._jobs.cancel(job_id, reason)

    async def list_jobs(
        self, queue: str, state: JobState, page: int, page_size: int, owner: str = ""
    ) -> JobPage:
        return await self._jobs.list(queue, state, page, page_size, owner)

    async def get_job(self, job_id: str) -> Job:
        return await self._jobs.get(job_id)

    async def publish_events(self, task_token: str, events: Sequence[JobEvent]) -> None:
        token, item = await self._jobs.holder(task_token)
        rules.check_events(events)
        if not schema.taken_up(item):
            await self._jobs.take_up(token, item, schema.visibility_of(item) or self._visibility)
        await self._events.publish(token, item, events)

    @asynccontextmanager
    async def subscribe_events(self, job_id: str, query: EventQuery) -> AsyncIterator[EventStream]:
        await self._jobs.get(job_id)
        async with self._events.subscribe(job_id, query) as stream:
            yield stream

    async def _job_is_final(self, job_id: str) -> bool:
        return await self._jobs.is_final(job_id)
