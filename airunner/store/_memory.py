"""The in-memory store: the whole JobStore behaviour in one process.

Everything runs on one trio thread and no method awaits between reading and
writing its state, so no locks are needed. Deadlines are trio times, so tests
drive visibility expiry with a mock clock.

Memory is bounded. A job's output is capped (``rules.cap_output``), and
finished jobs are kept up to a count, a total of output bytes and an age,
oldest finished first: each call first forgets the finished jobs past their
age, and finishing a job forgets the oldest while there are too many. An
evicted job is gone: NotFound, and its request_id makes a new job. Jobs
waiting or running are never evicted.
"""

from __future__ import annotations

import bisect
import copy
import heapq
import itertools
import logging
import math
import os
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio
from protobuf.wkt import Timestamp

from airunner import telemetry
from airunner.actors import Actor, VisibilitySweeper
from airunner.api.job.v1.job_pb import (
    Job,
    JobEvent,
    JobParams,
    JobResult,
    JobState,
)
from airunner.wakeup import Wakeup

from . import rules
from ._contract import (
    FINAL_STATES,
    Delivery,
    EventQuery,
    JobPage,
    last_sequence_of,
    rebased,
)
from ._errors import InvalidArgument, NotFound, ResourceExhausted, StaleTaskToken
from ._ids import new_job_id
from ._tokens import TaskToken, TaskTokenSigner

log = logging.getLogger(__name__)

DEFAULT_QUEUES = ("default", "priority")
# Events one subscriber may have waiting before its stream is ended. A live
# watcher drains far faster than a worker publishes; one that does not is
# told where to resume instead of holding unbounded memory.
DEFAULT_SUBSCRIBER_BUFFER = 256
# Finished jobs kept: plenty for looking back over a day's work on one machine.
DEFAULT_MAX_FINISHED_JOBS = 1000
# How long a finished job is kept: a day, the time frame of "what ran earlier".
DEFAULT_FINISHED_JOB_TTL_SECONDS = 24 * 60 * 60
# Output bytes of all finished jobs together: with the per-job cap (32 MiB) it
# keeps the store's memory a number one can state, however many jobs finish.
DEFAULT_MAX_FINISHED_OUTPUT_BYTES = 256 * 1024 * 1024


@dataclass(eq=False)
class _JobRecord:
    job: Job
    queue: str
    request_id: str
    # Position in the queue: a released or expired job goes back to its place.
    order: int
    # Runs the job may have.
    max_attempts: int
    # Deliveries so far; the current task token names the last.
    attempt: int = 0
    # Deliveries a worker took up (a run each), and whether the current one is.
    runs: int = 0
    taken_up: bool = False
    # The visibility timeout the current delivery's dequeuer asked for.
    visibility: int = 0
    # Trio time at which the current delivery expires, while RUNNING.
    visible_until: float = math.inf
    result: JobResult | None = None
    # The delivery whose CompleteJob recorded the result (0: the store did).
    completed_by: int = 0
    events: dict[int, JobEvent] = field(default_factory=dict)
    sequences: list[int] = field(default_factory=list)
    # Added to the worker's sequences of the current delivery, so that a job run
    # twice keeps one increasing event log (0 for the first run).
    sequence_base: int = 0
    # The highest sequence stored, counting the items an output batch covers.
    last_sequence: int = 0
    # Output stored so far, over all runs, and where it was cut.
    output: rules.OutputLedger = field(default_factory=rules.OutputLedger)
    # Trio time at which the job became final.
    finished_at: float = math.inf
    subscribers: set[_Subscriber] = field(default_factory=set)

    @property
    def state(self) -> JobState:
        return self.job.state


@dataclass(eq=False)
class _Queue:
    ready: list[tuple[int, str]] = field(default_factory=list)
    # The dequeuers asleep on this queue, first come first; a dequeuer of
    # several queues is in each of its queues', and waking it takes it out of all.
    waiters: dict[_Waiter, None] = field(default_factory=dict)
    # Dequeuers of this queue woken and yet to look for a job.
    woken: int = 0


class _Waiter:
    """One DequeueJob call asleep until a job is ready on one of its queues."""

    __slots__ = ("queues", "readied", "woken")

    def __init__(self, queues: list[_Queue]) -> None:
        self.queues = queues
        self.readied = trio.Event()
        self.woken = False


class _Subscriber:
    """One StreamJobEvents subscription: its history, then a bounded live buffer."""

    def __init__(
        self, job_id: str, history: list[JobEvent], query: EventQuery, buffer: int
    ) -> None:
        self._job_id = job_id
        self._history = deque(history)
        self._query = query
        self._buffer = buffer
        self._send, self._receive = trio.open_memory_channel[JobEvent](buffer)
        self._overflowed = False
        self._last_sequence = query.from_sequence - 1

    def offer(self, event: JobEvent) -> None:
        """Queue a live event without blocking the publisher."""
        if not self._query.matches(event):
            return
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            self._overflowed = True
            self._send.close()
            telemetry.channels_overflow.add(1, {"channel": "subscriber"})
            telemetry.events_dropped.add(1, {"reason": "subscriber_overflow"})
            log.warning(
                "event subscriber of job %s fell %d events behind; ending its stream",
                self._job_id,
                self._buffer,
            )
        except trio.ClosedResourceError:
            telemetry.events_dropped.add(1, {"reason": "subscriber_overflow"})

    def finish(self) -> None:
        """No event follows the ones already queued: the job is final."""
        self._send.close()

    async def receive(self) -> JobEvent | None:
        if self._history:
            await trio.lowlevel.checkpoint()
            event = self._history.popleft()
        else:
            try:
                event = await self._receive.receive()
            except trio.EndOfChannel:
                if self._overflowed:
                    raise ResourceExhausted(
                        f"this subscriber fell more than {self._buffer} events behind; "
                        f"resume with from_sequence={self._last_sequence + 1}"
                    ) from None
                return None
        self._last_sequence = event.sequence
        return event


class MemoryJobStore:
    """A JobStore kept in this process's memory; nothing survives a restart.

    Args:
        queues: The queue names jobs may be enqueued to (checked by the caller:
            ``config`` reads them from AIRUNNER_QUEUES).
        default_visibility_timeout: Seconds a delivery stays invisible when the
            dequeuer does not say.
        token_secret: HMAC secret for task tokens; random when not given, so
            tokens do not outlive the process (neither do its jobs).
        subscriber_buffer: Live events one subscriber may have waiting.
        max_attempts: Runs a job may have unless it says otherwise.
        confirm_seconds: How long a delivery waits to be taken up.
        max_output_bytes: Output bytes stored per job, over all its runs.
        max_finished_jobs: Finished jobs kept.
        finished_job_ttl: Seconds a finished job is kept.
        max_finished_output_bytes: Output bytes kept of all finished jobs together.
    """

    def __init__(
        self,
        *,
        queues: Collection[str] = DEFAULT_QUEUES,
        default_visibility_timeout: int = rules.DEFAULT_VISIBILITY_TIMEOUT_SECONDS,
        token_secret: bytes | None = None,
        subscriber_buffer: int = DEFAULT_SUBSCRIBER_BUFFER,
        max_attempts: int = rules.DEFAULT_MAX_ATTEMPTS,
        confirm_seconds: int = rules.CONFIRM_SECONDS,
        max_output_bytes: int = rules.DEFAULT_MAX_OUTPUT_BYTES,
        max_finished_jobs: int = DEFAULT_MAX_FINISHED_JOBS,
        finished_job_ttl: float = DEFAULT_FINISHED_JOB_TTL_SECONDS,
        max_finished_output_bytes: int = DEFAULT_MAX_FINISHED_OUTPUT_BYTES,
    ) -> None:
        self._queues = {name: _Queue() for name in queues}
        self._default_visibility = rules.visibility_timeout(default_visibility_timeout, 300)
        self._signer = TaskTokenSigner(token_secret or os.urandom(32))
        self._subscriber_buffer = subscriber_buffer
        self._max_attempts = max_attempts
        self._confirm_seconds = confirm_seconds
        self._max_output_bytes = max_output_bytes
        self._max_finished_jobs = max_finished_jobs
        self._finished_job_ttl = finished_job_ttl
        self._max_finished_output_bytes = max_finished_output_bytes
        # Every job, in the order it was created (ListJobs reads it backwards).
        self._jobs: dict[str, _JobRecord] = {}
        # Finished jobs in the order they finished, and their output bytes.
        self._finished: OrderedDict[str, _JobRecord] = OrderedDict()
        self._finished_output_bytes = 0
        self._by_request_id: dict[str, _JobRecord] = {}
        self._order = itertools.count()
        # (deadline, job id, attempt); entries of updated or ended deliveries stay
        # until they reach the top and are skipped there.
        self._expiries: list[tuple[float, str, int]] = []
        self._expiry_changed = Wakeup()

    def actors(self) -> Sequence[Actor]:
        return [VisibilitySweeper(self)]

    async def enqueue_job(self, request_id: str, queue: str, params: JobParams | None) -> Job:
        await trio.lowlevel.checkpoint()
        self._evict_expired()
        params = rules.check_enqueue(request_id, queue, params, self._queues)
        if (existing := self._by_request_id.get(request_id)) is not None:
            return copy.deepcopy(existing.job)
        now = _now()
        job = Job(
            job_id=new_job_id(),
            queue=queue,
            job_params=copy.deepcopy(params),
            state=JobState.SCHEDULED,
            created_at=now,
            updated_at=now,
            execution_config=rules.default_execution_config(),
        )
        record = _JobRecord(
            job=job,
            queue=queue,
            request_id=request_id,
            order=next(self._order),
            max_attempts=rules.attempt_limit(params, self._max_attempts),
        )
        self._jobs[job.job_id] = record
        self._by_request_id[request_id] = record
        self._make_ready(record)
        telemetry.jobs_enqueued.add(1, {"queue": queue})
        return copy.deepcopy(job)

    async def dequeue_job(
        self,
        queues: Sequence[str],
        visibility_timeout_seconds: int,
        *,
        deadline: float,
        worker_name: str = "",
    ) -> Delivery | None:
        await trio.lowlevel.checkpoint()
        self._evict_expired()
        names = rules.check_queues(queues, self._queues)
        visibility = rules.visibility_timeout(visibility_timeout_seconds, self._default_visibility)
        worker_name = rules.check_worker_name(worker_name)
        waiting = [self._queues[name] for name in names]
        with trio.move_on_at(deadline):
            while True:
                # The first queue in the caller's order that has a job gives it.
                for queue in waiting:
                    if queue.ready:
                        _, job_id = heapq.heappop(queue.ready)
                        # Jobs left on its other queues may have counted on this
                        # dequeuer, woken for them too.
                        self._wake_waiters(waiting)
                        return self._deliver(self._jobs[job_id], visibility, worker_name)
                # Nothing awaits between the look above and joining the waiters:
                # no job made ready in between is missed.
                waiter = _Waiter(waiting)
                for queue in waiting:
                    queue.waiters[waiter] = None
                try:
                    await waiter.readied.wait()
                except BaseException:
                    # Cancelled, perhaps after being woken for a job: whoever
                    # is next takes it instead.
                    self._leave(waiter)
                    self._wake_waiters(waiting)
                    raise
                self._leave(waiter)
                # Woken: the loop takes a job, unless a dequeuer that never
                # slept took it first, and sleeps again if not.
        return None

    async def release_job(self, task_token: str) -> None:
        await trio.lowlevel.checkpoint()
        self._evict_expired()
        _, record = self._current(task_token)
        self._end_delivery(record)

    async def update_job(
        self, queue: str, task_token: str, visibility_timeout_seconds: int
    ) -> None:
        await trio.lowlevel.checkpoint()
        self._evict_expired()
        rules.check_queue(queue, self._queues)
        token, record = self._current(task_token)
        rules.check_token_queue(token, queue)
        visibility = rules.visibility_timeout(visibility_timeout_seconds, self._default_visibility)
        self._take_up(record)
        self._set_visible_until(record, trio.current_time() + visibility)
        telemetry.jobs_visibility_updates.add(1, {"queue": queue})

    async def complete_job(self, task_token: str, result: JobResult | None) -> None:
        await trio.lowlevel.checkpoint()
        self._evict_expired()
        token = self._signer.verify(task_token)
        result = rules.check_result(result, token)
        record = self._jobs.get(token.job_id)
        if (
            record is not None
            and record.state in FINAL_STATES
            and record.completed_by == token.attempt
            and record.result is not None
        ):
            rules.check_repeated_completion(record.result, result)
            return
        _, record = self._current(task_token)
        self._take_up(record)
        record.completed_by = token.attempt
        if record.job.cancel_requested:
            final = JobState.CANCELLED
        else:
            final = JobState.COMPLETED if result.success else JobState.FAILED
        self._finish(record, final, copy.deepcopy(result))

    async def cancel_job(self, job_id: str, reason: str) -> Job:
        await trio.lowlevel.checkpoint()
        self._evict_expired()
        reason = rules.check_cancel_reason(reason)
        record = self._record(job_id)
        if record.state in FINAL_STATES:
            # CANCELLED included: a second cancel of a cancelled job says so.
            raise rules.already_ended(job_id, record.state)
        if record.job.cancel_requested:
            # Asked before; RUNNING until its worker stops it.
            return copy.deepcopy(record.job)
        record.job.cancel_requested = True
        record.job.cancel_reason = reason
        if record.state == JobState.SCHEDULED or not record.taken_up:
            # No run is under way: it ends now. A delivery not yet taken up is
            # over (its token is stale), so it never becomes a run.
            if record.state == JobState.SCHEDULED:
                waiting = self._queues[record.queue]
                waiting.ready.remove((record.order, record.job.job_id))
                heapq.heapify(waiting.ready)
            self._store_event(record, rules.cancel_event(record.last_sequence + 1, reason))
            self._finish(record, JobState.CANCELLED, None)
        else:
            record.job.updated_at = _now()
        log.info("job %s: cancel requested (%s)", job_id, reason or "no reason given")
        return copy.deepcopy(record.job)

    async def list_jobs(
        self, queue: str, state: JobState, page: int, page_size: int, owner: str = ""
    ) -> JobPage:
        await trio.lowlevel.checkpoint()
        self._evict_expired()
        page, page_size = rules.page_args(state, page, page_size)
        if queue:
            rules.check_queue(queue, self._queues)
        matching = [
            record
            for record in reversed(self._jobs.values())
            if (not queue or record.queue == queue)
            and (state == JobState.UNSPECIFIED or record.state == state)
            and (not owner or _owner(record.job) == owner)
        ]
        start = (page - 1) * page_size
        jobs = [copy.deepcopy(record.job) for record in matching[start : start + page_size]]
        return JobPage(jobs=jobs, last_page=rules.last_page(len(matching), page_size))

    async def get_job(self, job_id: str) -> Job:
        await trio.lowlevel.checkpoint()
        self._evict_expired()
        return copy.deepcopy(self._record(job_id).job)

    async def publish_events(self, task_token: str, events: Sequence[JobEvent]) -> None:
        await trio.lowlevel.checkpoint()
        self._evict_expired()
        _, record = self._current(task_token)
        rules.check_events(events)
        if not record.taken_up:
            self._take_up(record)
            self._set_visible_until(record, trio.current_time() + record.visibility)
        telemetry.events_publish.add(len(events), {"queue": record.queue})
        stored_count = 0
        for event in events:
            if record.sequence_base + event.sequence in record.events:
                continue
            new = rebased(event, record.sequence_base, record.runs)
            for stored in rules.cap_output(new, record.output, self._max_output_bytes):
                stored_count += 1
                self._store_event(record, stored)
        telemetry.events_persisted.add(stored_count, {"queue": record.queue})

    @asynccontextmanager
    async def subscribe_events(self, job_id: str, query: EventQuery) -> AsyncIterator[_Subscriber]:
        await trio.lowlevel.checkpoint()
        self._evict_expired()
        record = self._record(job_id)
        start = bisect.bisect_left(record.sequences, query.from_sequence)
        history = [
            event
            for sequence in record.sequences[start:]
            if query.matches(event := record.events[sequence])
        ]
        subscriber = _Subscriber(job_id, history, query, self._subscriber_buffer)
        if record.state in FINAL_STATES:
            subscriber.finish()
        else:
            record.subscribers.add(subscriber)
        telemetry.streams_active.add(1)
        try:
            yield subscriber
        finally:
            record.subscribers.discard(subscriber)
            telemetry.streams_active.add(-1)

    # The VisibilitySweeper's side.

    def expiry_changed(self) -> trio.Event:
        """Set when an earlier expiry than the one last reported appears."""
        return self._expiry_changed.next_wake()

    def next_expiry(self) -> float | None:
        """The trio time at which the next delivery expires, if any runs."""
        while self._expiries:
            deadline, job_id, attempt = self._expiries[0]
            record = self._jobs.get(job_id)
            if (
                record is not None
                and record.state == JobState.RUNNING
                and record.attempt == attempt
                and record.visible_until == deadline
            ):
                return deadline
            heapq.heappop(self._expiries)
        return None

    def expire_due(self, now: float) -> None:
        """End every delivery that expired by ``now``."""
        while (deadline := self.next_expiry()) is not None and deadline <= now:
            _, job_id, _ = heapq.heappop(self._expiries)
            record = self._jobs[job_id]
            log.info(
                "visibility of job %s (delivery %d, %s) expired",
                job_id,
                record.attempt,
                f"run {record.runs}" if record.taken_up else "not taken up",
            )
            self._end_delivery(record)

    # Internals.

    def _record(self, job_id: str) -> _JobRecord:
        if not job_id:
            raise InvalidArgument("job_id is required")
        record = self._jobs.get(job_id)
        if record is None:
            raise NotFound(f"job {job_id} not found")
        return record

    def _current(self, task_token: str) -> tuple[TaskToken, _JobRecord]:
        """The token's claims and job, if the token's delivery is still current."""
        token = self._signer.verify(task_token)
        record = self._jobs.get(token.job_id)
        rules.check_token_job(token, record.queue if record is not None else None)
        assert record is not None
        if (
            record.state != JobState.RUNNING
            or record.attempt != token.attempt
            or record.visible_until <= trio.current_time()
        ):
            raise StaleTaskToken()
        return token, record

    def _deliver(self, record: _JobRecord, visibility: int, worker_name: str) -> Delivery:
        record.attempt += 1
        record.taken_up = False
        record.visibility = visibility
        record.job.worker = worker_name
        record.sequence_base = record.last_sequence
        self._set_state(record, JobState.RUNNING)
        first = min(visibility, self._confirm_seconds)
        self._set_visible_until(record, trio.current_time() + first)
        telemetry.jobs_dequeued.add(1, {"queue": record.queue})
        if record.attempt > 1:
            telemetry.jobs_redelivered.add(1, {"queue": record.queue})
        token = self._signer.sign(TaskToken(record.job.job_id, record.queue, record.attempt))
        return Delivery(job=copy.deepcopy(record.job), task_token=token)

    def _take_up(self, record: _JobRecord) -> None:
        """The worker took the delivery up: it is a run, which begins now."""
        if not record.taken_up:
            record.taken_up = True
            record.runs += 1
            record.job.attempt = record.runs
            record.job.started_at = _now()

    def _end_delivery(self, record: _JobRecord) -> None:
        """End a delivery that will not complete the job (released or expired).

        A run that was taken up lost its worker: its log gets a closing event,
        and the job fails if it had all its runs. A delivery never taken up
        costs nothing: the job simply goes back to its queue. A job whose
        cancel was requested ends CANCELLED instead of running again.
        """
        cancelled = record.job.cancel_reason if record.job.cancel_requested else None
        if record.taken_up:
            failed = record.runs >= record.max_attempts
            last = record.events[record.sequences[-1]] if record.sequences else None
            if not rules.ends_run(last, record.sequence_base):
                sequence = record.last_sequence + 1
                closing = rules.lost_run_event(
                    sequence, record.runs, failed=failed, cancelled=cancelled
                )
                self._store_event(record, closing)
            if cancelled is None and failed:
                result = rules.exhausted_result(record.job.job_id, record.runs)
                self._finish(record, JobState.FAILED, result)
                return
        if cancelled is not None:
            self._finish(record, JobState.CANCELLED, None)
            return
        self._make_ready(record)

    def _finish(self, record: _JobRecord, state: JobState, result: JobResult | None) -> None:
        """End the job in ``state``; ``result`` is its CompleteJob's (or the
        store's), None if it was cancelled without one."""
        record.result = result
        record.visible_until = math.inf
        self._set_state(record, state)
        rules.record_end(record.job, state, result, record.job.cancel_reason)
        record.job.finished_at = record.job.updated_at
        for subscriber in record.subscribers:
            subscriber.finish()
        telemetry.jobs_completed.add(1, {"queue": record.queue, "state": state.name})
        record.finished_at = trio.current_time()
        self._finished[record.job.job_id] = record
        self._finished_output_bytes += record.output.stored_bytes
        while self._finished and (
            len(self._finished) > self._max_finished_jobs
            or self._finished_output_bytes > self._max_finished_output_bytes
        ):
            self._evict(next(iter(self._finished.values())))

    def _evict_expired(self) -> None:
        """Forget the finished jobs older than their time to live (the oldest first)."""
        deadline = trio.current_time() - self._finished_job_ttl
        while self._finished:
            oldest = next(iter(self._finished.values()))
            if oldest.finished_at > deadline:
                return
            self._evict(oldest)

    def _evict(self, record: _JobRecord) -> None:
        """Forget a finished job: it is not found from now on, and its request_id
        makes a new job."""
        job_id = record.job.job_id
        del self._finished[job_id]
        del self._jobs[job_id]
        self._finished_output_bytes -= record.output.stored_bytes
        if self._by_request_id.get(record.request_id) is record:
            del self._by_request_id[record.request_id]
        # Finished already; they end once they have read what they hold.
        for subscriber in record.subscribers:
            subscriber.finish()
        record.subscribers.clear()
        log.debug("finished job %s evicted", job_id)

    def _store_event(self, record: _JobRecord, stored: JobEvent) -> None:
        """Keep an event (its sequence already past earlier runs'); tell subscribers."""
        if stored.timestamp is None:
            stored.timestamp = _now()
        sequence = stored.sequence
        record.events[sequence] = stored
        record.last_sequence = max(record.last_sequence, last_sequence_of(stored))
        if not record.sequences or sequence > record.sequences[-1]:
            record.sequences.append(sequence)
        else:
            bisect.insort(record.sequences, sequence)
        for subscriber in record.subscribers:
            subscriber.offer(stored)

    def _make_ready(self, record: _JobRecord) -> None:
        record.visible_until = math.inf
        self._set_state(record, JobState.SCHEDULED)
        waiting = self._queues[record.queue]
        heapq.heappush(waiting.ready, (record.order, record.job.job_id))
        self._wake_waiters([waiting])

    def _wake_waiters(self, queues: Sequence[_Queue]) -> None:
        """Wake the longest asleep dequeuers of ``queues`` until each ready
        job has one woken for it, so that no job is ready while a dequeuer
        of its queue sleeps, and one job wakes one dequeuer, not all.

        A woken dequeuer that takes no job (it was cancelled, or one that
        never slept took the job first) calls this again, as does one that
        took a job while others waited on its other queues.
        """
        for queue in queues:
            while len(queue.ready) > queue.woken and queue.waiters:
                waiter = next(iter(queue.waiters))
                waiter.woken = True
                for woken in waiter.queues:
                    del woken.waiters[waiter]
                    woken.woken += 1
                waiter.readied.set()

    def _leave(self, waiter: _Waiter) -> None:
        """The dequeuer is no longer asleep nor woken."""
        for queue in waiter.queues:
            if waiter.woken:
                queue.woken -= 1
            else:
                del queue.waiters[waiter]

    def _set_visible_until(self, record: _JobRecord, deadline: float) -> None:
        record.visible_until = deadline
        head = self.next_expiry()
        heapq.heappush(self._expiries, (deadline, record.job.job_id, record.attempt))
        if head is None or deadline < head:
            self._expiry_changed.wake()

    def _set_state(self, record: _JobRecord, state: JobState) -> None:
        record.job.state = state
        record.job.updated_at = _now()


def _owner(job: Job) -> str:
    return job.job_params.owner if job.job_params is not None else ""


def _now() -> Timestamp:
    return Timestamp.from_nanos(time.time_ns())
