"""The Connect handlers: decode, check, call the store. Rules live in the store."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import trio
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from opentelemetry import propagate

from airunner import telemetry
from airunner.api.job.v1.job_connect import JobEventsService, JobService
from airunner.api.job.v1.job_pb import (
    CancelJobRequest,
    CancelJobResponse,
    CompleteJobRequest,
    CompleteJobResponse,
    DequeueJobRequest,
    DequeueJobResponse,
    EnqueueJobRequest,
    EnqueueJobResponse,
    GetJobRequest,
    GetJobResponse,
    JobEvent,
    JobParams,
    ListJobsRequest,
    ListJobsResponse,
    PublishJobEventsRequest,
    PublishJobEventsResponse,
    RetryJobRequest,
    RetryJobResponse,
    StreamJobEventsRequest,
    StreamJobEventsResponse,
    UpdateJobRequest,
    UpdateJobResponse,
)
from airunner.store import InvalidArgument, JobStore, StoreError, rules

from ._drain import Drain
from ._errors import error_reason

log = logging.getLogger(__name__)

# How long a DequeueJob waits for jobs before it ends with none, as SQS's
# longest long poll. A worker simply polls again.
DEQUEUE_POLL_WINDOW_SECONDS = 20.0

_Ctx = RequestContext[Any, Any]

# Releasing a job whose dequeuer left may take this long, even while the server
# drains; past it the delivery simply expires (it was never taken up).
RELEASE_SECONDS = 5.0

# The job_params.metadata key that carries the W3C trace context of the job's submitter.
TRACEPARENT = "traceparent"


class JobServiceHandler(JobService):
    """job.v1.JobService."""

    def __init__(
        self,
        store: JobStore,
        drain: Drain,
        *,
        poll_window: float = DEQUEUE_POLL_WINDOW_SECONDS,
    ) -> None:
        self._store = store
        self._drain = drain
        self._poll_window = poll_window

    async def enqueue_job(self, request: EnqueueJobRequest, ctx: _Ctx) -> EnqueueJobResponse:
        params = request.job_params or JobParams()
        if TRACEPARENT not in params.metadata:
            # The job's story joins this trace: the worker's execution span is
            # a child of this request's span. Without telemetry nothing is added.
            propagate.inject(params.metadata)
        job = await self._store.enqueue_job(request.request_id, request.queue, params)
        return EnqueueJobResponse(job_id=job.job_id, created_at=job.created_at, state=job.state)

    async def dequeue_job(
        self, request: DequeueJobRequest, ctx: _Ctx
    ) -> AsyncIterator[DequeueJobResponse]:
        wanted = rules.max_jobs(request.max_jobs)
        deadline = trio.current_time() + self._poll_window
        for _ in range(wanted):
            delivery = None
            with self._drain.cancel_on_drain():
                delivery = await self._store.dequeue_job(
                    [request.queue, *request.more_queues],
                    request.visibility_timeout_seconds,
                    deadline=deadline,
                    worker_name=rules.check_worker_name(request.worker_name),
                )
            if delivery is None:
                return
            delivered = False
            try:
                yield DequeueJobResponse(job=delivery.job, task_token=delivery.task_token)
                delivered = True
            finally:
                if not delivered:
                    # The client left before the job reached it: hand the job to
                    # the next dequeuer now, not when its visibility runs out.
                    with trio.CancelScope(shield=True), trio.move_on_after(RELEASE_SECONDS):
                        try:
                            await self._store.release_job(delivery.task_token)
                        except StoreError as e:
                            # Its delivery expires on its own: it was never taken up.
                            log.warning("could not release job %s: %s", delivery.job.job_id, e)
                        else:
                            log.info("released job %s: its dequeuer left", delivery.job.job_id)

    async def update_job(self, request: UpdateJobRequest, ctx: _Ctx) -> UpdateJobResponse:
        await self._store.update_job(
            request.queue, request.task_token, request.visibility_timeout_seconds
        )
        return UpdateJobResponse()

    async def complete_job(self, request: CompleteJobRequest, ctx: _Ctx) -> CompleteJobResponse:
        await self._store.complete_job(request.task_token, request.job_result)
        return CompleteJobResponse()

    async def list_jobs(self, request: ListJobsRequest, ctx: _Ctx) -> ListJobsResponse:
        page = await self._store.list_jobs(
            request.queue, request.state, request.page, request.page_size, request.owner
        )
        return ListJobsResponse(
            jobs=[rules.public_job(job) for job in page.jobs], last_page=page.last_page
        )

    async def get_job(self, request: GetJobRequest, ctx: _Ctx) -> GetJobResponse:
        job = await self._store.get_job(rules.check_job_id(request.job_id))
        return GetJobResponse(job=rules.public_job(job))

    async def cancel_job(self, request: CancelJobRequest, ctx: _Ctx) -> CancelJobResponse:
        job = await self._store.cancel_job(
            rules.check_job_id(request.job_id), rules.check_cancel_reason(request.reason)
        )
        log.info("job %s: cancel asked (%s)", job.job_id, job.state.name.lower())
        return CancelJobResponse(job=rules.public_job(job))

    async def retry_job(self, request: RetryJobRequest, ctx: _Ctx) -> RetryJobResponse:
        earlier = await self._store.get_job(rules.check_job_id(request.job_id))
        params = rules.retry_params(earlier)
        # The retry's story is its own: it joins the trace of this request.
        params.metadata.pop(TRACEPARENT, None)
        propagate.inject(params.metadata)
        job = await self._store.enqueue_job(request.request_id, earlier.queue, params)
        return RetryJobResponse(job=rules.public_job(job))


class JobEventsServiceHandler(JobEventsService):
    """job.v1.JobEventsService."""

    def __init__(self, store: JobStore, drain: Drain) -> None:
        self._store = store
        self._drain = drain

    async def stream_job_events(
        self, request: StreamJobEventsRequest, ctx: _Ctx
    ) -> AsyncIterator[StreamJobEventsResponse]:
        query = rules.check_event_query(
            request.job_id, request.from_sequence, request.from_timestamp, request.event_filter
        )
        next_sequence = query.from_sequence
        replay = _Replay()
        try:
            async with self._store.subscribe_events(request.job_id, query) as events:
                while True:
                    event = None
                    with self._drain.cancel_on_drain() as waiting:
                        event = await events.receive()
                    if waiting.cancelled_caught:
                        raise ConnectError(
                            Code.UNAVAILABLE,
                            "server is shutting down; reconnect with "
                            f"from_sequence={max(next_sequence, 1)}",
                        )
                    if event is None:
                        return
                    next_sequence = event.sequence + 1
                    yield StreamJobEventsResponse(event=event)
                    replay.sent(event)
        finally:
            replay.record()

    async def publish_job_events(
        self, request: AsyncIterator[PublishJobEventsRequest], ctx: _Ctx
    ) -> PublishJobEventsResponse:
        task_token = ""
        async for message in request:
            if message.task_token and task_token and message.task_token != task_token:
                raise InvalidArgument("task_token must not change within one stream")
            task_token = task_token or message.task_token
            if not task_token:
                raise InvalidArgument("task_token is required")
            began = time.perf_counter()
            try:
                await self._store.publish_events(task_token, message.events)
            except Exception as e:
                telemetry.events_publish_errors.add(1, {"reason": error_reason(e)})
                raise
            finally:
                telemetry.events_publish_duration.record(time.perf_counter() - began)
        if not task_token:
            raise InvalidArgument("task_token is required: the stream had no message")
        return PublishJobEventsResponse()


class _Replay:
    """Measures a subscriber's historical replay: the events stored before it came.

    An event is historical when its timestamp precedes the subscription (the
    publisher's clock: a skewed worker clock misplaces events only within the
    skew). The replay ends at the first live event, or with the stream.
    """

    def __init__(self) -> None:
        self._since_ns = time.time_ns()
        self._began = time.perf_counter()
        self._ended_at = self._began
        self._events = 0
        self._live = False

    def sent(self, event: JobEvent) -> None:
        if self._live:
            return
        stamped = event.timestamp.to_nanos() if event.timestamp is not None else 0
        if stamped >= self._since_ns:
            self._live = True
            return
        self._events += 1
        self._ended_at = time.perf_counter()

    def record(self) -> None:
        if self._events:
            telemetry.streams_replay_duration.record(self._ended_at - self._began)
            telemetry.streams_replay_events.add(self._events)
