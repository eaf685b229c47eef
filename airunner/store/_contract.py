"""The JobStore protocol: what every store does, and the values it trades in.

The behaviour is described in docs/ARCHITECTURE.md ("Job lifecycle and
delivery"); tests/contract runs one suite against every store.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Literal, Protocol

from protobuf import Oneof
from protobuf.wkt import Timestamp

from airunner.actors import Actor
from airunner.api.job.v1.job_pb import (
    EventType,
    Job,
    JobEvent,
    JobParams,
    JobResult,
    JobState,
    ProcessErrorEvent,
)


@dataclass(frozen=True)
class Delivery:
    """One delivery of a job to a dequeuer: the job (RUNNING) and its task token."""

    job: Job
    task_token: str


@dataclass(frozen=True)
class JobPage:
    jobs: list[Job]
    last_page: int


@dataclass(frozen=True)
class EventQuery:
    """Which events a subscriber wants. Zero values select everything."""

    from_sequence: int = 0
    from_timestamp_ms: int = 0
    event_types: frozenset[EventType] = field(default_factory=frozenset)

    def matches(self, event: JobEvent) -> bool:
        if event.sequence < self.from_sequence:
            return False
        if self.from_timestamp_ms and event_time_ms(event) < self.from_timestamp_ms:
            return False
        return not self.event_types or event.event_type in self.event_types


class EventStream(Protocol):
    """A subscriber's view of one job's events: history first, then live."""

    async def receive(self) -> JobEvent | None:
        """Return the next event, or None once the job's final event has been returned.

        Raises:
            ResourceExhausted: the subscriber fell too far behind the publisher; the
                message says the sequence to resume from.

        Cancellation:
            Safe: a cancelled receive loses no event.
        """
        ...


class JobStore(Protocol):
    """Durable job queue and event log. All methods are safe to call concurrently."""

    def actors(self) -> Sequence[Actor]:
        """The long-lived tasks this store needs running while it serves."""
        ...

    async def enqueue_job(self, request_id: str, queue: str, params: JobParams | None) -> Job:
        """Create a SCHEDULED job, or return the job already created for request_id."""
        ...

    async def dequeue_job(
        self,
        queues: Sequence[str],
        visibility_timeout_seconds: int,
        *,
        deadline: float,
        worker_name: str = "",
    ) -> Delivery | None:
        """Wait until a job of one of ``queues`` can be delivered, or ``deadline`` (trio time).

        A job is taken from the first queue in ``queues`` that has one (the SQS
        store keeps the order roughly). The delivered job is RUNNING, records
        ``worker_name`` (Job.worker), and is invisible for the visibility
        timeout (0 = the store's default). Raises InvalidArgument naming a
        queue the store does not serve.

        Cancellation:
            Safe: a cancelled dequeue has delivered nothing.
        """
        ...

    async def release_job(self, task_token: str) -> None:
        """Return a delivered job to its queue at once (its delivery failed)."""
        ...

    async def update_job(
        self, queue: str, task_token: str, visibility_timeout_seconds: int
    ) -> None:
        """Extend the visibility of the delivery behind the token from now."""
        ...

    async def complete_job(self, task_token: str, result: JobResult | None) -> None:
        """Record the result; the job becomes COMPLETED or FAILED and never runs again.

        A job whose cancel was requested becomes CANCELLED whatever the result says.
        """
        ...

    async def cancel_job(self, job_id: str, reason: str) -> Job:
        """Cancel a job and return it as it is after the call.

        A SCHEDULED job becomes CANCELLED at once and is never delivered. A
        RUNNING job gets ``cancel_requested`` (its worker stops it); it ends
        CANCELLED when its worker completes it or its delivery runs out, and
        never runs again. Asking twice changes nothing.

        Raises:
            NotFound: no such job.
            FailedPrecondition: the job has already ended (the message names its state).
        """
        ...

    async def list_jobs(
        self, queue: str, state: JobState, page: int, page_size: int, owner: str = ""
    ) -> JobPage:
        """Jobs newest first, filtered by queue ("" = all), state (UNSPECIFIED =
        all) and owner ("" = all). Secrets are included: callers show only
        ``rules.public_job``."""
        ...

    async def get_job(self, job_id: str) -> Job:
        """Return one job, secrets included (callers show only ``rules.public_job``).

        Raises NotFound.
        """
        ...

    async def publish_events(self, task_token: str, events: Sequence[JobEvent]) -> None:
        """Store events of the delivery behind the token, each sequence once, and
        fan them out to live subscribers."""
        ...

    def subscribe_events(
        self, job_id: str, query: EventQuery
    ) -> AbstractAsyncContextManager[EventStream]:
        """Open a stream of the job's stored events, then its live ones.

        Raises:
            NotFound: no such job.
        """
        ...


TERMINAL_EVENT_TYPES = frozenset({EventType.PROCESS_END, EventType.PROCESS_ERROR})
FINAL_STATES = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED})


def last_sequence_of(event: JobEvent) -> int:
    """The last sequence an event covers: an output batch's end_sequence, else its own."""
    data = event.event_data
    if data is not None and data.field == "output_batch":
        return max(event.sequence, data.value.end_sequence)
    return event.sequence


def event_time_ms(event: JobEvent) -> int:
    return event.timestamp.to_nanos() // 1_000_000 if event.timestamp is not None else 0


def process_error_event(sequence: int, message: str, attempt: int = 0) -> JobEvent:
    """A PROCESS_ERROR event, stamped now: a run that ended without its process's end
    (``attempt``, that run; 0 for none)."""
    return JobEvent(
        sequence=sequence,
        attempt=attempt,
        timestamp=Timestamp.from_nanos(time.time_ns()),
        event_type=EventType.PROCESS_ERROR,
        event_data=Oneof[Literal["process_error"], ProcessErrorEvent](
            field="process_error", value=ProcessErrorEvent(error_message=message)
        ),
    )


def rebased(event: JobEvent, base: int, attempt: int) -> JobEvent:
    """The event as stored: its sequences moved past the job's earlier runs, and
    marked as the run ``attempt``'s."""
    if not base and event.attempt == attempt:
        return event
    stored = copy.deepcopy(event)
    stored.attempt = attempt
    stored.sequence += base
    if stored.event_data is not None and stored.event_data.field == "output_batch":
        batch = stored.event_data.value
        batch.start_sequence += base
        batch.end_sequence += base
    return stored
