"""airunner-cli monitor: replay a job's output, then follow it to the job's end."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass

import trio
from connectrpc.code import Code
from connectrpc.errors import ConnectError

from airunner.api.job.v1.job_pb import (
    CancelJobRequest,
    EventType,
    GetJobRequest,
    Job,
    JobEvent,
    JobState,
    StreamJobEventsRequest,
    StreamType,
)
from airunner.client import AirunnerClient
from airunner.store import last_sequence_of

from ._common import CliError, client_options, connected, explain, run_interruptibly, status

# A watcher whose stream broke reconnects for this long without reaching the
# server before it gives up: long enough to ride out a server's restart (or a
# replica's replacement behind a load balancer), short enough to notice within
# seconds a server that is gone. Retries start at RETRY_FIRST_DELAY and double
# up to RETRY_MAX_DELAY.
RECONNECT_WINDOW_SECONDS = 5.0
RETRY_FIRST_DELAY = 0.25
RETRY_MAX_DELAY = 1.0
# A job that has shown nothing after this long is looked up: if it still waits
# for a worker, the watcher says so, once.
WAITING_NOTICE_SECONDS = 1.0

# Exit statuses of submit and monitor besides the job's own exit code.
EXIT_FAILED = 1
EXIT_TIMED_OUT = 124
EXIT_CANCELLED = 125

EXIT_STATUS_HELP = (
    "Exit status: the job's exit code; 124 if it ran past its timeout; 125 if it was "
    "cancelled; 1 if it failed without an exit code (its reason is printed); 130 after "
    "Ctrl-C (the job goes on unless --cancel-on-interrupt)."
)


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    monitor = commands.add_parser(
        "monitor",
        parents=[client_options()],
        help="replay and follow a job's output",
        epilog=EXIT_STATUS_HELP,
    )
    monitor.add_argument("job_id")
    monitor.add_argument(
        "--from-sequence",
        type=int,
        default=0,
        metavar="N",
        help="start at event N (default 0: the whole log); a broken stream says where to resume",
    )
    add_interrupt_option(monitor)
    monitor.set_defaults(run=_run)


def add_interrupt_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cancel-on-interrupt",
        action="store_true",
        help="on Ctrl-C (or SIGTERM), cancel the job; without it the job goes on",
    )


def _run(args: argparse.Namespace) -> int:
    followed = Followed(args.job_id)
    return run_interruptibly(
        lambda: _monitor(args), on_interrupt(args, followed, "airunner-cli monitor")
    )


async def _monitor(args: argparse.Namespace) -> int:
    if args.from_sequence < 0:
        raise CliError("--from-sequence must not be negative")
    async with connected(args) as client:
        return await follow(client, args.job_id, args.from_sequence)


@dataclass
class Followed:
    """The job a command follows, once it has an id (submit learns it from the server)."""

    job_id: str | None = None


def on_interrupt(
    args: argparse.Namespace, followed: Followed, command: str
) -> Callable[[signal.Signals], Awaitable[None]]:
    """What a signal to submit or monitor does: say the job goes on and how to
    cancel it, or (``--cancel-on-interrupt``) cancel it and say so."""

    async def interrupted(received: signal.Signals) -> None:
        job_id = followed.job_id
        if job_id is None:
            status(
                f"{received.name}: stopped before the server answered; the job may have "
                "been submitted all the same: `airunner-cli list` shows it"
            )
            return
        if not args.cancel_on_interrupt:
            status(
                f"{received.name}: stopped following job {job_id}, which goes on; "
                f"`airunner-cli monitor {job_id}` follows it again, "
                f"`airunner-cli cancel {job_id}` cancels it"
            )
            return
        request = CancelJobRequest(job_id=job_id, reason=f"{received.name} to {command}")
        try:
            async with connected(args) as client:
                response = await client.cancel_job(request)
        except ConnectError as e:
            if e.code == Code.FAILED_PRECONDITION:
                status(f"{received.name}: job {job_id} had already ended: {e.message}")
                return
            reason = explain(e, " or ".join(args.server))
            status(
                f"{received.name}: could not cancel job {job_id}: {reason}; "
                f"the job goes on: `airunner-cli cancel {job_id}` cancels it"
            )
            return
        except CliError as e:
            status(f"{received.name}: could not cancel job {job_id}: {e}")
            return
        status(f"{received.name}: {cancel_outcome(response.job, job_id)}")

    return interrupted


def cancel_outcome(job: Job | None, job_id: str) -> str:
    """What a CancelJob did, in words."""
    if job is not None and job.state == JobState.RUNNING:
        return f"job {job_id}: cancel requested; the worker stops it within a few seconds"
    return f"job {job_id} cancelled"


async def follow(client: AirunnerClient, job_id: str, from_sequence: int, queue: str = "") -> int:
    """Write the job's output as it comes; return the exit status for its end.

    Output goes to stdout and stderr as the job wrote it, byte for byte; status
    lines go to stderr. A broken stream is resumed from the next sequence, for
    as long as RECONNECT_WINDOW_SECONDS allows. ``queue``: where the job was
    submitted, for the line that says it waits for a worker.
    """
    next_sequence = from_sequence
    from_events: int | None = None
    run = 0
    broken_since: float | None = None
    attempts = 0
    async with trio.open_nursery() as nursery:
        waiting = trio.CancelScope()
        nursery.start_soon(_say_when_waiting, client, job_id, queue, waiting)
        while True:
            request = StreamJobEventsRequest(job_id=job_id, from_sequence=next_sequence)
            try:
                async with aclosing(client.stream_job_events(request)) as events:
                    async for response in events:
                        broken_since, attempts = None, 0
                        if response.event is None:
                            continue
                        waiting.cancel()
                        line = attempt_line(run, response.event.attempt)
                        if line:
                            status(line)
                        run = response.event.attempt or run
                        outcome = _show(response.event)
                        if outcome is not None:
                            from_events = outcome
                        next_sequence = last_sequence_of(response.event) + 1
                break
            except ConnectError as e:
                if e.code == Code.NOT_FOUND:
                    raise CliError(f"no job {job_id} (or the server no longer keeps it)") from None
                if e.code not in (Code.UNAVAILABLE, Code.RESOURCE_EXHAUSTED):
                    raise explain(e, client.server) from None
                now = trio.current_time()
                if broken_since is None:
                    broken_since = now
                    status(
                        f"stream interrupted ({e.message}); resuming from sequence {next_sequence}"
                    )
                elif now - broken_since >= RECONNECT_WINDOW_SECONDS:
                    raise CliError(
                        f"{explain(e, client.server)}; gave up after "
                        f"{RECONNECT_WINDOW_SECONDS:g} s of retries. Once the server is back, "
                        f"`airunner-cli monitor {job_id} --from-sequence {next_sequence}` "
                        "resumes where this stopped"
                    ) from None
                await trio.sleep(min(RETRY_FIRST_DELAY * 2.0**attempts, RETRY_MAX_DELAY))
                attempts += 1
        nursery.cancel_scope.cancel()
    return exit_status(await _final_record(client, job_id), from_events)


async def _say_when_waiting(
    client: AirunnerClient, job_id: str, queue: str, scope: trio.CancelScope
) -> None:
    with scope:
        await trio.sleep(WAITING_NOTICE_SECONDS)
        try:
            job = (await client.get_job(GetJobRequest(job_id=job_id))).job
        except ConnectError:
            # The stream reports what is wrong with the server.
            return
        if job is not None and job.state == JobState.SCHEDULED:
            where = job.queue or queue
            status(f"waiting for a worker on queue {where}" if where else "waiting for a worker")


async def _final_record(client: AirunnerClient, job_id: str) -> Job | None:
    """The job as it ended, or None if the server cannot say (the events decide then)."""
    try:
        job = (await client.get_job(GetJobRequest(job_id=job_id))).job
    except ConnectError:
        return None
    if job is None or job.state in (JobState.SCHEDULED, JobState.RUNNING):
        return None
    return job


def exit_status(job: Job | None, from_events: int | None) -> int:
    """The exit status for a job that ended as ``job`` says, its events having
    given ``from_events`` (None if they gave no exit code)."""
    if job is not None and job.state == JobState.CANCELLED:
        status(f"job {job.failure_reason or 'cancelled'} (exit status {EXIT_CANCELLED})")
        return EXIT_CANCELLED
    if job is not None and job.timed_out:
        status(f"job timed out (exit status {EXIT_TIMED_OUT})")
        return EXIT_TIMED_OUT
    if job is not None and job.has_field("exit_code"):
        return _status_of(job.exit_code)
    if from_events is not None:
        return from_events
    reason = job.failure_reason if job is not None else ""
    status(f"job failed: {reason}" if reason else "the job ended without reporting an exit code")
    return EXIT_FAILED


def _status_of(code: int) -> int:
    # An exit status has 8 bits: a failure whose code they would read as 0 exits 1.
    return code if 0 <= code <= 255 else EXIT_FAILED


def attempt_line(shown: int, attempt: int) -> str:
    """The line that says a later run of the job begins, when the events of run
    ``attempt`` follow those of run ``shown`` (0: none yet); else ""."""
    if attempt > shown and (shown or attempt > 1):
        return f"attempt {attempt} of the job:"
    return ""


def _show(event: JobEvent) -> int | None:
    """Print one event; return the job's exit code once it is known."""
    data = event.event_data
    if data is None:
        return None
    if event.event_type == EventType.OUTPUT_BATCH and data.field == "output_batch":
        stdout, stderr = sys.stdout.buffer, sys.stderr.buffer
        for item in data.value.outputs:
            (stderr if item.stream_type == StreamType.STDERR else stdout).write(item.output)
        stdout.flush()
        stderr.flush()
    elif event.event_type == EventType.PROCESS_START and data.field == "process_start":
        status(f"process started (pid {data.value.pid})")
    elif event.event_type == EventType.PROCESS_END and data.field == "process_end":
        code = data.value.exit_code
        status(f"process exited with code {code}")
        return _status_of(code)
    elif event.event_type == EventType.PROCESS_ERROR and data.field == "process_error":
        # The run's end in the server's or worker's words ("cancelled: ...",
        # "timed out after ...", "run 1 lost its worker ...; the job runs
        # again"): not necessarily the job's failure, which the end says.
        status(data.value.error_message)
        return EXIT_FAILED
    elif event.event_type == EventType.OUTPUT_TRUNCATED and data.field == "output_truncated":
        sys.stdout.flush()
        status(
            f"output truncated: the server stores at most {data.value.limit_bytes} bytes "
            "of a job's output; the rest was dropped"
        )
    return None
