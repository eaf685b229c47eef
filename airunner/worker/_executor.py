"""JobExecutor: one delivery of a job, from checkout to CompleteJob."""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Literal

import trio
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from opentelemetry import propagate
from opentelemetry.trace import SpanKind, Status, StatusCode
from protobuf import Oneof
from protobuf.wkt import Duration, Timestamp

from airunner import telemetry
from airunner.api.job.v1.job_pb import (
    CompleteJobRequest,
    DequeueJobResponse,
    EventType,
    GetJobRequest,
    Job,
    JobEvent,
    JobParams,
    JobResult,
    JobState,
    ProcessEndEvent,
    ProcessStartEvent,
    ProcessType,
    UpdateJobRequest,
)
from airunner.client import AirunnerClient
from airunner.store import process_error_event, rules

from ._batcher import BatchLimits, OutputBatcher, Sequencer
from ._checkout import CheckoutError, checkout
from ._isolation import JobUser, give_tree
from ._orphans import JOB_ID_VARIABLE, OrphanReaper, TrackedJob
from ._process import KILL_GRACE_SECONDS, OutputChunk, ProcessOutcome, SpawnError, run_command
from ._publisher import DeliveryExpired, EventPublisher, PublishFailed
from ._redact import redact_text, secret_values

log = logging.getLogger(__name__)

# A job whose execution config names no heartbeat interval beats this often
# (and never less often than three times per visibility timeout).
DEFAULT_HEARTBEAT_SECONDS = 30
# A delivery is taken as held without asking until this long before the server's
# first hold of it could end (clocks and the network differ a little).
HELD_MARGIN_SECONDS = 1.0
# A failed heartbeat is tried again after this long, doubling up to the interval.
HEARTBEAT_RETRY_SECONDS = 1.0
# No heartbeat gets less time than this, even when the delivery has less left.
HEARTBEAT_MIN_TIMEOUT_SECONDS = 1.0
# Removing a job's workspace may take this long while the worker is stopping.
CLEANUP_SECONDS = 30.0
# Output chunks read from the process but not yet batched.
CHUNK_BUFFER = 16
# CompleteJob is retried this many times on transient errors.
COMPLETE_ATTEMPTS = 6
# Once the worker stops its jobs (a second signal, the drain timeout), a job's
# last events and its CompleteJob get this long from the end of its command:
# a server that is down does not keep the worker from exiting.
KILLED_REPORT_SECONDS = 10.0
# A running job asks the server this often whether it was cancelled: one
# GetJob per running job, whatever else waits in the queues.
CANCEL_CHECK_SECONDS = 3.0
# A failed check is tried again after a pause that doubles up to this.
CANCEL_CHECK_MAX_SECONDS = 60.0
# One check may take this long.
CANCEL_CHECK_TIMEOUT_SECONDS = 10.0
# The exit code recorded when the command did not run to its end.
NO_EXIT_CODE = -1
# Variables a job inherits from the worker; everything else it names itself.
# The worker's own secrets (AIRUNNER_TOKEN, JWT keys, AWS credentials) stay out.
INHERITED_VARIABLES = ("PATH", "HOME", "LANG", "LC_ALL", "USER", "LOGNAME", "TMPDIR", "TZ")


@dataclass(frozen=True)
class ExecutorSettings:
    queue: str
    visibility_timeout: int
    work_dir: Path
    kill_grace: float
    # Jobs run as this user, not as the (root) worker.
    job_user: JobUser | None = None
    # A cancelled job's process group gets this long between SIGTERM and SIGKILL.
    cancel_grace: float = KILL_GRACE_SECONDS
    cancel_check_interval: float = CANCEL_CHECK_SECONDS


class JobExecutor:
    """Runs one delivered job and reports it.

    Heartbeats (UpdateJob) run beside it. If the server refuses one, the job
    was lost to visibility expiry: the process is stopped and nothing is
    completed; so too when no server (of the client's) accepts a heartbeat or
    the events before the delivery would expire. Until then the job runs on and
    its events wait in the publisher. ``kill`` stops the job early and fails it;
    a job whose end the server has not taken ``KILLED_REPORT_SECONDS`` after its
    command's end is then given up, left to its delivery's expiry. ``reaper``
    ends what the job leaves running outside its process group.

    Beside them too, a GetJob every ``cancel_check_interval`` asks whether the
    job was cancelled (or is gone); if so its process group is stopped (SIGTERM,
    then SIGKILL after ``cancel_grace``) and the job completed as failed; the
    server records it as CANCELLED. The job's secrets are in its environment,
    and redacted from the output and the messages it publishes.
    """

    def __init__(
        self,
        client: AirunnerClient,
        delivery: DequeueJobResponse,
        settings: ExecutorSettings,
        *,
        kill: trio.Event,
        reaper: OrphanReaper,
    ) -> None:
        assert delivery.job is not None
        self._client = client
        self._job: Job = delivery.job
        self._token = delivery.task_token
        self._settings = settings
        self._kill = kill
        self._reaper = reaper
        self._params = self._job.job_params or JobParams()
        self._secrets = secret_values(self._params.secrets.values())
        # Set when the job was cancelled or is gone, with what the job's end says.
        self._stop = trio.Event()
        self._stop_reason = ""
        # Whether its command started, and when it has ended (with its group).
        self._command_started = False
        self._command_ended = trio.Event()
        # Set when the worker stopped the job and then gave up reporting it.
        self._given_up = False
        # Trio's clock runs on while the worker is stopped (SIGSTOP): the time
        # since the delivery came is known even after a freeze.
        self._received_at = trio.current_time()
        # When the delivery would expire (trio's clock) unless a heartbeat is
        # accepted first: the event stream's first message takes it up for the
        # visibility timeout, each accepted beat holds it that long again.
        self._held_until = math.inf

    @property
    def job_id(self) -> str:
        return self._job.job_id

    async def run(self) -> None:
        """Run the job to its end. Never raises for the job's own failures.

        Its span joins the trace of whoever submitted the job (the W3C context
        the server put in ``job_params.metadata``).
        """
        with telemetry.tracer.start_as_current_span(
            "execute job",
            context=propagate.extract(self._params.metadata),
            kind=SpanKind.CONSUMER,
            attributes={
                "airunner.job.id": self.job_id,
                "airunner.queue": self._settings.queue,
                "process.command": redact_text(self._params.command, self._secrets),
            },
        ) as span:
            result = await self._run_bounded()
            if self._given_up:
                span.set_status(Status(StatusCode.ERROR, "stopped and not reported"))
            elif result is None:
                span.set_status(Status(StatusCode.ERROR, "the delivery was lost"))
            else:
                span.set_attribute("airunner.job.success", result.success)
                span.set_attribute("process.exit.code", result.exit_code)

    async def _run_bounded(self) -> JobResult | None:
        """``_run``, given up ``KILLED_REPORT_SECONDS`` after ``kill`` and the
        command's end if the server has not taken the job's end by then."""
        with trio.CancelScope() as report:
            async with trio.open_nursery() as bound:
                bound.start_soon(self._give_up_after_kill, report)
                result = await self._run()
                bound.cancel_scope.cancel()
        return None if report.cancelled_caught else result

    async def _give_up_after_kill(self, report: trio.CancelScope) -> None:
        await self._kill.wait()
        # Stopping the command takes its own grace; the time to report starts after.
        if self._command_started:
            await self._command_ended.wait()
        await trio.sleep(KILLED_REPORT_SECONDS)
        log.warning(
            "job %s: the server did not take the job's end within %.0f s of it being "
            "stopped; giving up on it: its delivery runs out and it runs again on "
            "another worker (or fails as lost after its last attempt)",
            self.job_id,
            KILLED_REPORT_SECONDS,
        )
        self._given_up = True
        # Cancelling leaves no process behind: the command's end, the sweeps and
        # the workspace's removal are shielded.
        report.cancel()

    async def _run(self) -> JobResult | None:
        started_at = time.time_ns()
        log.info(
            "job %s: starting %s", self.job_id, redact_text(self._params.command, self._secrets)
        )
        workspace = Path(
            await trio.to_thread.run_sync(
                lambda: tempfile.mkdtemp(prefix=f"{self.job_id}-", dir=self._settings.work_dir)
            )
        )
        try:
            with self._reaper.track(self.job_id) as tracked:
                result = await self._run_reporting(workspace, started_at, tracked)
        except Exception as e:
            # Whatever stopped this worker from running the job fails it now,
            # rather than leaving it to run (and stop) again on every worker.
            log.exception("job %s: the worker could not run it", self.job_id)
            result = self._result(
                started_at, NO_EXIT_CODE, f"the worker could not run the job: {e!r}"
            )
        finally:
            # Strays that other jobs' sweeps left while this job might own them,
            # and what a stopped checkout left.
            await self._reaper.sweep()
            # Even when the worker is stopping (cancelled): no workspace is left behind.
            with trio.CancelScope(shield=True), trio.move_on_after(CLEANUP_SECONDS):
                await trio.to_thread.run_sync(lambda: shutil.rmtree(workspace, ignore_errors=True))
        if result is None:
            return None
        with telemetry.tracer.start_as_current_span("complete job"):
            await self._complete(result)
        return result

    async def _run_reporting(
        self, workspace: Path, started_at: int, tracked: TrackedJob
    ) -> JobResult | None:
        """Run the job with its heartbeats and its event stream beside it.

        Returns None if the delivery was lost: the server refused a heartbeat,
        or no server was reached before it expired.
        """
        # Until then a server that cannot be reached is tried again, and the
        # job's process runs on.
        self._held_until = trio.current_time() + self._settings.visibility_timeout
        publisher = EventPublisher(
            self._client,
            self._token,
            spool_dir=self._settings.work_dir,
            held_until=lambda: self._held_until,
        )
        failure: Exception | None = None
        with trio.CancelScope() as delivery:
            async with trio.open_nursery() as heartbeats:
                heartbeats.start_soon(self._heartbeat, delivery)
                heartbeats.start_soon(self._watch_cancel)
                try:
                    async with trio.open_nursery() as work:
                        await work.start(publisher.run)
                        try:
                            result = await self._execute(
                                workspace, publisher, started_at, delivery, tracked
                            )
                        finally:
                            publisher.end()
                except* PublishFailed as failed:
                    # The publisher is a child of ``work``: its error is not nested deeper.
                    failure = failed.exceptions[0]
                # The publisher has finished: heartbeats kept the delivery until then.
                heartbeats.cancel_scope.cancel()
        # cancel_called rather than cancelled_caught: a refusal that comes as the
        # work ends has nothing left to cancel, and the delivery is lost all the same.
        if delivery.cancel_called:
            # Lost wins over a publish failure, which stopping the work may have caused.
            return None
        if isinstance(failure, DeliveryExpired):
            # The publisher saw the delivery run out before the heartbeats did.
            self._log_expired(str(failure))
            return None
        if failure is not None:
            log.error("job %s: %s", self.job_id, failure)
            return self._result(
                started_at, NO_EXIT_CODE, f"could not publish its events: {failure}"
            )
        if publisher.lost_events:
            note = f"{publisher.lost_events} output events could not be published"
            log.warning("job %s: %s", self.job_id, note)
            result.error_message = "; ".join(m for m in (result.error_message, note) if m)
        return result

    async def _execute(
        self,
        workspace: Path,
        publisher: EventPublisher,
        started_at: int,
        delivery: trio.CancelScope,
        tracked: TrackedJob,
    ) -> JobResult:
        sequences = Sequencer()
        # Stopping the worker cuts a long checkout short too.
        cwd: Path | None = None
        checkout_error = ""
        async with self._until_killed(or_stopped=True):
            with telemetry.tracer.start_as_current_span("checkout") as span:
                try:
                    cwd = await checkout(self._params, workspace / "checkout")
                except CheckoutError as e:
                    checkout_error = f"checkout failed: {e}"
                    span.set_status(Status(StatusCode.ERROR, checkout_error))
        if self._stop.is_set():
            return await self._fail(publisher, sequences, started_at, self._stop_reason)
        if checkout_error:
            return await self._fail(publisher, sequences, started_at, checkout_error)
        if cwd is None:
            return await self._fail(
                publisher, sequences, started_at, "the worker stopped before the job started"
            )
        user = self._settings.job_user
        if user is not None:
            await trio.to_thread.run_sync(give_tree, workspace, user)
        if not await self._still_held():
            # Never run a command for a delivery the server may have given away.
            delivery.cancel()
            await trio.lowlevel.checkpoint()
        start_sequence = sequences.take()

        checked_at = trio.current_time()

        async def on_start(pid: int, at_ns: int) -> None:
            # Frozen between the check and the start (the process forks in a
            # thread), the worker asks again, and stops a process it no longer
            # may run at once.
            late = trio.current_time() - checked_at > HELD_MARGIN_SECONDS
            if late and not await self._still_held(asked=True):
                delivery.cancel()
                await trio.lowlevel.checkpoint()
            await publisher.publish(_start_event(start_sequence, pid, at_ns))

        chunks_send, chunks_receive = trio.open_memory_channel[OutputChunk](CHUNK_BUFFER)
        batcher = OutputBatcher(
            BatchLimits.from_config(self._job.execution_config),
            sequences,
            publisher.publish,
            secrets=self._secrets,
        )
        outcome: ProcessOutcome | None = None
        spawn_error = ""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(batcher.run, chunks_receive)
            async with self._until_killed():
                self._command_started = True
                try:
                    with telemetry.tracer.start_as_current_span("run command"):
                        outcome = await run_command(
                            [self._params.command, *self._params.args],
                            cwd=cwd,
                            env=self._environment(),
                            pty=self._params.process_type == ProcessType.PTY,
                            time_limit=self._params.timeout_seconds or None,
                            output=chunks_send,
                            on_start=on_start,
                            kill_grace=self._settings.kill_grace,
                            stop=self._stop,
                            stop_grace=self._settings.cancel_grace,
                            user=user,
                            tracked=tracked,
                        )
                except SpawnError as e:
                    spawn_error = str(e)
                finally:
                    self._command_ended.set()
        # The output channel is closed on every path, so the batcher has sent
        # the last output before the final event below.
        if spawn_error:
            return await self._fail(publisher, sequences, started_at, spawn_error)
        if outcome is None:
            return await self._fail(
                publisher, sequences, started_at, "the worker stopped before the job finished"
            )
        if outcome.timed_out:
            message = (
                f"timed out after {self._params.timeout_seconds} s; its process group was stopped"
            )
            return await self._fail(
                publisher,
                sequences,
                started_at,
                message,
                exit_code=outcome.exit_code,
                timed_out=True,
            )
        if outcome.stopped:
            message = f"{self._stop_reason}; its process group was stopped"
            return await self._fail(
                publisher, sequences, started_at, message, exit_code=outcome.exit_code
            )
        await publisher.publish(_end_event(sequences.take(), outcome))
        return self._result(started_at, outcome.exit_code, "")

    @asynccontextmanager
    async def _until_killed(self, *, or_stopped: bool = False) -> AsyncIterator[None]:
        """Run the body until it ends or ``kill`` is set, whichever comes first;
        with ``or_stopped``, or until the job is cancelled."""
        async with trio.open_nursery() as guard:
            guard.start_soon(self._cancel_on_kill, guard.cancel_scope)
            if or_stopped:
                guard.start_soon(_cancel_when_set, self._stop, guard.cancel_scope)
            yield
            guard.cancel_scope.cancel()

    async def _cancel_on_kill(self, scope: trio.CancelScope) -> None:
        await self._kill.wait()
        log.warning("job %s: stopping it, the worker is stopping", self.job_id)
        scope.cancel()

    async def _fail(
        self,
        publisher: EventPublisher,
        sequences: Sequencer,
        started_at: int,
        message: str,
        *,
        exit_code: int = NO_EXIT_CODE,
        timed_out: bool = False,
    ) -> JobResult:
        shown = redact_text(message, self._secrets)
        log.info("job %s: %s", self.job_id, shown)
        await publisher.publish(process_error_event(sequences.take(), shown))
        return self._result(started_at, exit_code, message, timed_out=timed_out)

    def _result(
        self, started_at: int, exit_code: int, error: str, *, timed_out: bool = False
    ) -> JobResult:
        return JobResult(
            job_id=self.job_id,
            success=exit_code == 0 and not error,
            exit_code=exit_code,
            # A command not found may be named by its secret, say.
            error_message=redact_text(error, self._secrets),
            started_at=Timestamp.from_nanos(started_at),
            completed_at=Timestamp.from_nanos(time.time_ns()),
            timed_out=timed_out,
        )

    def _environment(self) -> dict[str, str]:
        env = {name: os.environ[name] for name in INHERITED_VARIABLES if name in os.environ}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        user = self._settings.job_user
        if user is not None:
            env.update(HOME=user.home, USER=user.name, LOGNAME=user.name)
        if self._params.process_type == ProcessType.PTY:
            env["TERM"] = "xterm-256color"
        env.update(self._params.environment)
        # The server refuses a name in both.
        env.update(self._params.secrets)
        # Last: the job's processes name their job truly (the OrphanReaper and
        # the watchdog go by it).
        env[JOB_ID_VARIABLE] = self.job_id
        return env

    async def _still_held(self, *, asked: bool = False) -> bool:
        """Whether the delivery is still this worker's, just before its command starts.

        Until the worker's take-up is accepted the server holds a delivery for the
        confirm window at least; past that (a long checkout, a worker frozen
        meanwhile, clocks apart) one UpdateJob asks; ``asked`` always asks.
        """
        window = min(self._settings.visibility_timeout, rules.CONFIRM_SECONDS)
        # Since it came; or since the server delivered it, by the server's stamp,
        # for a delivery that waited in the connection while the worker was frozen.
        elapsed = trio.current_time() - self._received_at
        if self._job.updated_at is not None:
            delivered_ns = self._job.updated_at.to_nanos()
            elapsed = max(elapsed, (time.time_ns() - delivered_ns) / 1e9)
        if not asked and elapsed < window - HELD_MARGIN_SECONDS:
            return True
        try:
            await self._client.update_job(
                UpdateJobRequest(
                    queue=self._settings.queue,
                    task_token=self._token,
                    visibility_timeout_seconds=self._settings.visibility_timeout,
                )
            )
        except ConnectError as e:
            log.warning("job %s: not running it: %s", self.job_id, e.message)
            return False
        return True

    async def _heartbeat(self, delivery: trio.CancelScope) -> None:
        """Extend the delivery's visibility well before it runs out.

        If the server refuses, the delivery is lost: ``delivery`` is cancelled.
        """
        config = self._job.execution_config
        interval = float(
            config.heartbeat_interval_seconds
            if config is not None and config.heartbeat_interval_seconds > 0
            else DEFAULT_HEARTBEAT_SECONDS
        )
        visibility = self._settings.visibility_timeout
        # At least two beats may fail before the delivery expires.
        interval = min(interval, visibility / 3)
        request = UpdateJobRequest(
            queue=self._settings.queue,
            task_token=self._token,
            visibility_timeout_seconds=visibility,
        )
        next_beat = trio.current_time() + interval
        retry = HEARTBEAT_RETRY_SECONDS
        while True:
            await trio.sleep_until(next_beat)
            began = trio.current_time()
            # A beat may take as long as the delivery has left, no longer.
            left = self._held_until - began
            try:
                await self._client.update_job(
                    request, rpc_timeout=max(HEARTBEAT_MIN_TIMEOUT_SECONDS, left)
                )
            except ConnectError as e:
                if e.code == Code.INVALID_ARGUMENT:
                    log.warning("job %s: lost (%s); not completing it", self.job_id, e.message)
                    delivery.cancel()
                    return
                now = trio.current_time()
                if now >= self._held_until:
                    # The server may already have given the job to another
                    # worker: two runs at once is worse than a rerun.
                    self._log_expired(e.message)
                    delivery.cancel()
                    return
                log.warning(
                    "job %s: heartbeat failed (%s); again in %.0f s", self.job_id, e.message, retry
                )
                # Again soon, while the delivery lasts: not a whole interval
                # later, and once more as it runs out.
                next_beat = min(now + retry, self._held_until)
                retry = min(retry * 2, interval)
                continue
            self._held_until = began + visibility
            next_beat = began + interval
            retry = HEARTBEAT_RETRY_SECONDS

    def _log_expired(self, error: str) -> None:
        log.warning(
            "job %s: lost (no heartbeat accepted within its visibility timeout: %s); stopping it",
            self.job_id,
            error,
        )

    async def _watch_cancel(self) -> None:
        """Ask the server every ``cancel_check_interval`` whether the job was
        cancelled, or is gone; if so, set ``_stop``.

        A failed question is asked again with backoff: the job runs on meanwhile.
        """
        interval = self._settings.cancel_check_interval
        request = GetJobRequest(job_id=self.job_id)
        delay = interval
        while True:
            await trio.sleep(delay)
            try:
                response = await self._client.get_job(
                    request, rpc_timeout=CANCEL_CHECK_TIMEOUT_SECONDS
                )
            except ConnectError as e:
                if e.code == Code.NOT_FOUND:
                    self._stop_job("the server no longer knows the job")
                    return
                if e.code == Code.UNIMPLEMENTED:
                    log.warning(
                        "job %s: the server has no GetJob: the job cannot be cancelled while "
                        "it runs (%s)",
                        self.job_id,
                        e.message,
                    )
                    return
                delay = min(delay * 2, max(interval, CANCEL_CHECK_MAX_SECONDS))
                log.warning(
                    "job %s: could not ask whether it was cancelled (%s); again in %.0f s",
                    self.job_id,
                    e.message,
                    delay,
                )
                continue
            delay = interval
            job = response.job
            if job is not None and (job.cancel_requested or job.state == JobState.CANCELLED):
                self._stop_job(rules.cancelled_text(job.cancel_reason))
                return

    def _stop_job(self, reason: str) -> None:
        log.warning("job %s: %s; stopping it", self.job_id, reason)
        self._stop_reason = reason
        self._stop.set()

    async def _complete(self, result: JobResult) -> None:
        backoff = 0.5
        for attempt in range(1, COMPLETE_ATTEMPTS + 1):
            try:
                await self._client.complete_job(
                    CompleteJobRequest(task_token=self._token, job_result=result)
                )
            except ConnectError as e:
                if e.code in (Code.INVALID_ARGUMENT, Code.UNAUTHENTICATED) or (
                    attempt == COMPLETE_ATTEMPTS
                ):
                    log.error("job %s: could not complete it: %s", self.job_id, e.message)
                    return
                await trio.sleep(backoff)
                backoff *= 2
                continue
            log.info(
                "job %s: %s (exit code %d)",
                self.job_id,
                "succeeded" if result.success else "failed",
                result.exit_code,
            )
            return


async def _cancel_when_set(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


def _start_event(sequence: int, pid: int, at_ns: int) -> JobEvent:
    return JobEvent(
        sequence=sequence,
        timestamp=Timestamp.from_nanos(at_ns),
        event_type=EventType.PROCESS_START,
        event_data=Oneof[Literal["process_start"], ProcessStartEvent](
            field="process_start",
            value=ProcessStartEvent(pid=pid, started_at=Timestamp.from_nanos(at_ns)),
        ),
    )


def _end_event(sequence: int, outcome: ProcessOutcome) -> JobEvent:
    return JobEvent(
        sequence=sequence,
        timestamp=Timestamp.from_nanos(time.time_ns()),
        event_type=EventType.PROCESS_END,
        event_data=Oneof[Literal["process_end"], ProcessEndEvent](
            field="process_end",
            value=ProcessEndEvent(
                pid=outcome.pid,
                exit_code=outcome.exit_code,
                run_duration=Duration.from_timedelta(timedelta(seconds=outcome.duration_seconds)),
            ),
        ),
    )
