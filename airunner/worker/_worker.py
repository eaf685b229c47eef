"""Worker: long-polls for jobs and runs up to ``concurrency`` of them at once."""

from __future__ import annotations

import logging
import random
from contextlib import aclosing
from dataclasses import dataclass, replace
from pathlib import Path

import trio
from connectrpc.code import Code
from connectrpc.errors import ConnectError

from airunner.api.job.v1.job_pb import DequeueJobRequest, DequeueJobResponse
from airunner.client import AirunnerClient
from airunner.wakeup import Wakeup

from ._executor import CANCEL_CHECK_SECONDS, ExecutorSettings, JobExecutor
from ._isolation import JobUser
from ._orphans import OrphanReaper
from ._process import KILL_GRACE_SECONDS

log = logging.getLogger(__name__)

# Longer than the server's 20 s poll window, so that the server ends a poll.
POLL_RPC_TIMEOUT_SECONDS = 30.0
# A poll that comes back empty sooner than this did not wait: the server is
# not long-polling, so wait before the next one.
QUICK_POLL_SECONDS = 1.0
# A failed poll is retried after a pause that doubles from the first to the
# last of these: a server that is down is not hammered, nor waited on for long.
BACKOFF_INITIAL_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 30.0
# One DequeueJob asks for at most this many jobs (the server's limit).
MAX_JOBS_PER_POLL = 10
# Answers to a poll that asking again will not change: a queue is not served
# there, or the token is refused. The worker stops instead of retrying.
REFUSALS = frozenset(
    {
        Code.INVALID_ARGUMENT,
        Code.NOT_FOUND,
        Code.UNAUTHENTICATED,
        Code.PERMISSION_DENIED,
        Code.UNIMPLEMENTED,
    }
)


class PollRefused(Exception):
    """The server refuses this worker's polls: it can never take a job there."""

    def __init__(self, error: ConnectError) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass(frozen=True)
class WorkerSettings:
    # The queues to take jobs from, the first first: a job of a later queue
    # only when the earlier ones have none.
    queues: tuple[str, ...] = ("default",)
    # Recorded on the jobs it takes (Job.worker): the host name, say.
    name: str = ""
    visibility_timeout: int = 300
    concurrency: int = 1
    work_dir: Path = Path("/tmp")
    kill_grace: float = KILL_GRACE_SECONDS
    # A cancelled job's process group gets this long between SIGTERM and SIGKILL.
    cancel_grace: float = KILL_GRACE_SECONDS
    # How often each running job asks the server whether it was cancelled.
    cancel_check_interval: float = CANCEL_CHECK_SECONDS
    # Run each job as this user (the worker must be root).
    job_user: JobUser | None = None
    # End and reap what jobs leave running outside their process group. Only
    # for a worker that is a process of its own and a child subreaper
    # (become_subreaper): every orphan below it is then a job's.
    reap_orphans: bool = False


class Worker:
    """Polls for jobs while it has free slots and runs each with a JobExecutor.

    ``stop`` (first SIGTERM): take no new job, let running ones finish, return.
    ``kill`` (second signal or a deadline): stop running jobs now and fail them.
    """

    def __init__(self, client: AirunnerClient, settings: WorkerSettings) -> None:
        self._client = client
        self._settings = settings
        self._running = 0
        self._slot_freed = Wakeup()
        self._reaper = OrphanReaper(enabled=settings.reap_orphans)
        self.stop = trio.Event()
        self.kill = trio.Event()
        self._refused: ConnectError | None = None

    async def run(self) -> None:
        executor_settings = ExecutorSettings(
            # Each job's own queue replaces it (_run_job).
            queue=self._settings.queues[0],
            visibility_timeout=self._settings.visibility_timeout,
            work_dir=self._settings.work_dir,
            kill_grace=self._settings.kill_grace,
            job_user=self._settings.job_user,
            cancel_grace=self._settings.cancel_grace,
            cancel_check_interval=self._settings.cancel_check_interval,
        )
        try:
            await self._run(executor_settings)
        finally:
            # Whatever the jobs' own sweeps had to leave, with no job running now.
            await self._reaper.sweep()
        log.info("worker stopped")
        if self._refused is not None:
            raise PollRefused(self._refused)

    async def _run(self, executor_settings: ExecutorSettings) -> None:
        backoff = BACKOFF_INITIAL_SECONDS
        async with trio.open_nursery() as jobs:
            while not self.stop.is_set():
                # Taken before the count is read, so that the wait below cannot
                # miss a slot freed after the read, whatever it awaits first.
                slot_freed = self._slot_freed.next_wake()
                free = self._settings.concurrency - self._running
                if free <= 0:
                    await self._wait_for(slot_freed)
                    continue
                began = trio.current_time()
                try:
                    received = await self._poll(
                        min(free, MAX_JOBS_PER_POLL), jobs, executor_settings
                    )
                except ConnectError as e:
                    if e.code in REFUSALS:
                        # Running jobs (if the refusal came later, a token that
                        # expired) finish as on SIGTERM; then run() raises.
                        log.error("the server refused to give jobs: %s", e.message)
                        self._refused = e
                        self.stop.set()
                        break
                    log.warning("polling failed: %s; retrying in %.0f s", e.message, backoff)
                    await self._pause(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)
                    continue
                backoff = BACKOFF_INITIAL_SECONDS
                if not received and trio.current_time() - began < QUICK_POLL_SECONDS:
                    await self._pause(QUICK_POLL_SECONDS)
            if self._running:
                log.info("stopping: waiting for %d running job(s) to finish", self._running)

    async def _poll(
        self, wanted: int, jobs: trio.Nursery, executor_settings: ExecutorSettings
    ) -> int:
        """One DequeueJob; starts each delivered job. Returns how many came."""
        first, *more = self._settings.queues
        request = DequeueJobRequest(
            queue=first,
            more_queues=more,
            max_jobs=wanted,
            visibility_timeout_seconds=self._settings.visibility_timeout,
            worker_name=self._settings.name,
        )
        received = 0
        failure: ConnectError | None = None
        with trio.CancelScope() as poll:
            async with trio.open_nursery() as watch:
                # Stopping ends an idle worker's poll at once. A worker still
                # running jobs keeps its poll to the end instead, so that a job
                # delivered meanwhile is handed back rather than left invisible.
                watch.start_soon(self._end_poll_on_stop, poll)
                deliveries = self._client.dequeue_job(
                    request, rpc_timeout=POLL_RPC_TIMEOUT_SECONDS
                )
                try:
                    async with aclosing(deliveries):
                        async for delivery in deliveries:
                            received += 1
                            if self.stop.is_set():
                                self._hand_back(delivery)
                                continue
                            # Counted now, not when the task starts, so that the
                            # next poll never asks for more than the free slots.
                            self._running += 1
                            jobs.start_soon(self._run_job, delivery, executor_settings)
                except ConnectError as e:
                    if e.code != Code.DEADLINE_EXCEEDED:
                        failure = e
                watch.cancel_scope.cancel()
        if failure is not None:
            raise failure
        return received

    async def _end_poll_on_stop(self, poll: trio.CancelScope) -> None:
        await self.stop.wait()
        # Nothing awaits between reading the count and waiting, and a job's
        # end lowers the count and wakes in one step: no wake is missed.
        while self._running:
            await self._slot_freed.wait()
        poll.cancel()

    def _hand_back(self, delivery: DequeueJobResponse) -> None:
        # Not taking a delivery up is handing it back: the server returns it to
        # its queue within seconds, and it uses up none of the job's attempts.
        job_id = delivery.job.job_id if delivery.job else "?"
        log.info("job %s arrived while stopping; leaving it to another worker", job_id)

    async def _run_job(self, delivery: DequeueJobResponse, settings: ExecutorSettings) -> None:
        if delivery.job is not None and delivery.job.queue:
            # Its heartbeats name its queue, whichever of ours it came from.
            settings = replace(settings, queue=delivery.job.queue)
        try:
            await JobExecutor(
                self._client, delivery, settings, kill=self.kill, reaper=self._reaper
            ).run()
        except Exception:
            job_id = delivery.job.job_id if delivery.job else "?"
            log.exception("job %s: the executor crashed", job_id)
        finally:
            self._running -= 1
            self._slot_freed.wake()

    async def _wait_for(self, event: trio.Event) -> None:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_set_then_cancel, self.stop, scope)
                await event.wait()
                scope.cancel()

    async def _pause(self, seconds: float) -> None:
        """Sleep about ``seconds`` (with jitter), or until stopping."""
        with trio.move_on_after(seconds * random.uniform(0.8, 1.2)):
            await self.stop.wait()


async def _set_then_cancel(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
