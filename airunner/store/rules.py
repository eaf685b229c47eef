"""Rules every store applies the same way: defaults, limits and input checks."""

from __future__ import annotations

import copy
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from protobuf import Oneof
from protobuf.wkt import Duration, Timestamp

from airunner.api.job.v1.job_pb import (
    BatchingConfig,
    EventType,
    ExecutionConfig,
    Job,
    JobEvent,
    JobParams,
    JobResult,
    JobState,
    OutputBatchEvent,
    OutputTruncatedEvent,
    ProcessType,
)

from ._contract import TERMINAL_EVENT_TYPES, EventQuery, process_error_event
from ._errors import FailedPrecondition, InvalidArgument
from ._tokens import TaskToken

# SQS refuses a visibility timeout above 12 hours; both stores keep to it.
MAX_VISIBILITY_TIMEOUT_SECONDS = 12 * 60 * 60
DEFAULT_VISIBILITY_TIMEOUT_SECONDS = 300
# A delivery is first invisible for this long at most; the worker takes it up
# (a first publish or update) well within it, else it goes back to its queue
# without using an attempt (a worker that froze or left meanwhile).
CONFIRM_SECONDS = 10
# Runs a job may have before it fails: a job that kills its worker is not
# retried for ever, and a flaky machine gets a second and a third chance.
DEFAULT_MAX_ATTEMPTS = 3
# Far above any sane retry policy; it bounds how long a job can keep failing.
MAX_ATTEMPTS_LIMIT = 25
# One SQS ReceiveMessage returns at most 10 messages.
MAX_JOBS_PER_DEQUEUE = 10
# Far above a UUID, far below DynamoDB's 2 KB limit on a key attribute.
MAX_REQUEST_ID_LENGTH = 256
# The longest reason CancelJob takes.
MAX_CANCEL_REASON_LENGTH = 1024
# The longest worker name DequeueJob records.
MAX_WORKER_NAME_LENGTH = 256
# JobResult.exit_code when the process ended without one (it never started, or
# the worker lost it).
NO_EXIT_CODE = -1
# The metadata key of a job made by RetryJob: the id of the job it retries.
RETRY_OF_METADATA = "airunner.retry_of"
# A job item holds its parameters beside its result and bookkeeping, all under
# DynamoDB's 400 KB item limit.
MAX_JOB_PARAMS_BYTES = 256 * 1024
# The worker sends batches of at most 256 KiB of output; an event item must stay
# under DynamoDB's 400 KB with its key and attributes.
MAX_EVENT_BYTES = 320 * 1024
# The highest sequence one run may use: far beyond any job's output, and with
# the runs before it added, far inside int64 and JSON's exact integers (2^53).
MAX_SEQUENCE = 2**40
# google.protobuf.Timestamp's and Duration's ranges.
_MIN_TIMESTAMP_SECONDS = -62_135_596_800
_MAX_TIMESTAMP_SECONDS = 253_402_300_799
_MAX_DURATION_SECONDS = 315_576_000_000
# Output bytes stored per job, over all its runs: far more than anyone reads in
# a terminal, and a job printing without end costs a bounded amount of memory
# (memory store) or DynamoDB writes (SQS store).
DEFAULT_MAX_OUTPUT_BYTES = 32 * 1024 * 1024
# Each output item counts this much toward the cap besides its bytes: storing an
# item costs about that again (a Python object in the memory store; key, framing
# and attributes on DynamoDB), so that output in items of a byte or two is
# bounded too. Items of a read's worth (kilobytes) hardly notice it.
OUTPUT_ITEM_OVERHEAD_BYTES = 128
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000

_PROCESS_TYPES = frozenset(ProcessType)
_EVENT_TYPES = frozenset(EventType) - {EventType.UNSPECIFIED}
# Event types only the store makes; a publisher that sends one is refused.
_STORE_EVENT_TYPES = frozenset({EventType.OUTPUT_TRUNCATED})
_STATES = frozenset(JobState)


def default_execution_config() -> ExecutionConfig:
    """How workers run jobs unless a store is told otherwise."""
    return ExecutionConfig(
        batching=BatchingConfig(
            flush_interval_seconds=1,
            max_batch_size=1000,
            max_batch_bytes=256 * 1024,
            playback_interval_millis=50,
        ),
        # Well inside the default 300 s visibility timeout, so a missed beat or
        # two does not lose the job.
        heartbeat_interval_seconds=30,
        # A watcher sees trickling output within about this long.
        output_flush_interval_millis=100,
    )


def check_queue(queue: str, known: Collection[str]) -> str:
    if not queue:
        raise InvalidArgument("queue is required")
    if queue not in known:
        raise InvalidArgument(f"unknown queue {queue!r}; known queues: {', '.join(sorted(known))}")
    return queue


def check_enqueue(
    request_id: str, queue: str, params: JobParams | None, known_queues: Collection[str]
) -> JobParams:
    """Check an EnqueueJob request; return its parameters."""
    if not request_id:
        raise InvalidArgument("request_id is required")
    if len(request_id) > MAX_REQUEST_ID_LENGTH:
        raise InvalidArgument(f"request_id is longer than {MAX_REQUEST_ID_LENGTH} characters")
    check_queue(queue, known_queues)
    if params is None:
        raise InvalidArgument("job_params is required")
    if not params.command:
        raise InvalidArgument("job_params.command is required")
    if params.timeout_seconds < 0:
        raise InvalidArgument("job_params.timeout_seconds must not be negative")
    if not 0 <= params.max_attempts <= MAX_ATTEMPTS_LIMIT:
        raise InvalidArgument(
            f"job_params.max_attempts must be between 0 and {MAX_ATTEMPTS_LIMIT}"
        )
    if params.process_type not in _PROCESS_TYPES:
        raise InvalidArgument(f"job_params.process_type {int(params.process_type)} is unknown")
    _check_runnable(params)
    size = len(params.to_binary())
    if size > MAX_JOB_PARAMS_BYTES:
        raise InvalidArgument(
            f"job_params is {size} bytes encoded; the limit is {MAX_JOB_PARAMS_BYTES}"
        )
    return params


def _check_runnable(params: JobParams) -> None:
    """Refuse what no process can be started with: it would fail on every worker."""
    texts = {
        "repository": params.repository,
        "commit": params.commit,
        "branch": params.branch,
        "command": params.command,
        "working_directory": params.working_directory,
        "owner": params.owner,
    }
    texts.update({f"args[{i}]": arg for i, arg in enumerate(params.args)})
    for name, value in params.environment.items():
        if not name or "=" in name:
            raise InvalidArgument(
                f"job_params.environment has the name {name!r}: names are not empty "
                "and hold no '='"
            )
        texts[f"environment name {name!r}"] = name
        texts[f"environment[{name!r}]"] = value
    for name, value in params.secrets.items():
        if not name or "=" in name:
            raise InvalidArgument(
                f"job_params.secrets has the name {name!r}: names are not empty and hold no '='"
            )
        if name in params.environment:
            raise InvalidArgument(
                f"job_params names {name!r} both in environment and in secrets; keep one"
            )
        texts[f"secrets name {name!r}"] = name
        if "\0" in value:
            # The value itself is never repeated, not even in an error.
            raise InvalidArgument(f"job_params.secrets[{name!r}] holds a NUL byte")
    for field, value in texts.items():
        if "\0" in value:
            raise InvalidArgument(f"job_params.{field} holds a NUL byte")


def public_job(job: Job) -> Job:
    """The job as GetJob, ListJobs, CancelJob and RetryJob show it: secrets by name only."""
    shown = copy.deepcopy(job)
    if shown.job_params is not None and shown.job_params.secrets:
        shown.secret_names = sorted(shown.job_params.secrets)
        shown.job_params.secrets = {}
    return shown


def retry_params(job: Job) -> JobParams:
    """The parameters of a job that retries ``job``: its own, secrets included,
    with metadata naming the job it retries."""
    params = copy.deepcopy(job.job_params) if job.job_params is not None else JobParams()
    params.metadata[RETRY_OF_METADATA] = job.job_id
    return params


def check_job_id(job_id: str) -> str:
    if not job_id:
        raise InvalidArgument("job_id is required")
    return job_id


def check_worker_name(name: str) -> str:
    """A worker's name as DequeueJob records it on the jobs it takes."""
    if len(name) > MAX_WORKER_NAME_LENGTH:
        raise InvalidArgument(f"worker_name is longer than {MAX_WORKER_NAME_LENGTH} characters")
    if "\0" in name:
        raise InvalidArgument("worker_name holds a NUL byte")
    return name


def check_cancel_reason(reason: str) -> str:
    """A CancelJob reason, as it is stored and shown."""
    if len(reason) > MAX_CANCEL_REASON_LENGTH:
        raise InvalidArgument(f"reason is longer than {MAX_CANCEL_REASON_LENGTH} characters")
    if "\0" in reason:
        raise InvalidArgument("reason holds a NUL byte")
    return reason


def cancelled_text(reason: str) -> str:
    """Job.failure_reason of a CANCELLED job."""
    return f"cancelled: {reason}" if reason else "cancelled"


def failure_reason(state: JobState, result: JobResult | None, cancel_reason: str) -> str:
    """Job.failure_reason: why a job FAILED or was CANCELLED, in words; "" otherwise."""
    if state == JobState.CANCELLED:
        return cancelled_text(cancel_reason)
    if state != JobState.FAILED or result is None:
        return ""
    if result.error_message:
        return result.error_message
    if result.exit_code != NO_EXIT_CODE:
        return f"exited with code {result.exit_code}"
    return "failed without an exit code or a message"


def record_end(
    job: Job, state: JobState, result: JobResult | None, cancel_reason: str = ""
) -> None:
    """Set what a final job's record says of its end, from its result (None for
    a job cancelled before it ran): state, exit code, failure reason, timeout."""
    job.state = state
    if result is not None and result.exit_code != NO_EXIT_CODE:
        job.exit_code = result.exit_code
    else:
        job.clear_field("exit_code")
    job.timed_out = result.timed_out if result is not None else False
    job.failure_reason = failure_reason(state, result, cancel_reason)


def already_ended(job_id: str, state: JobState) -> FailedPrecondition:
    """CancelJob's error for a job in a final state."""
    return FailedPrecondition(
        f"job {job_id} has already ended: {state.name.lower()}; there is nothing to cancel"
    )


def cancel_event(sequence: int, reason: str) -> JobEvent:
    """The event that closes the log of a job cancelled while no run of it was
    under way: a watcher sees why the job ended."""
    return process_error_event(sequence, cancelled_text(reason))


def check_queues(queues: Sequence[str], known: Collection[str]) -> list[str]:
    """The queues a dequeuer serves, in its order, each once; each must be known.

    A bare string is one queue's name: a ``str`` is a ``Sequence[str]`` too, and
    ``"default"`` must not read as ``"d", "e", ...``.
    """
    if isinstance(queues, str):
        queues = [queues]
    if not queues or not any(queues):
        raise InvalidArgument("queue is required")
    ordered: list[str] = []
    for queue in queues:
        check_queue(queue, known)
        if queue not in ordered:
            ordered.append(queue)
    return ordered


def attempt_limit(params: JobParams | None, default: int) -> int:
    """The runs a job may have: its own max_attempts, or the store's default."""
    return (params.max_attempts if params is not None else 0) or default


def lost_run_event(
    sequence: int, run: int, *, failed: bool, cancelled: str | None = None
) -> JobEvent:
    """The event that closes a run whose worker was lost (no heartbeat in time).

    ``failed``: it was the job's last allowed run, and the job fails.
    ``cancelled``: the job's cancel was requested (with this reason), and the
    job ends CANCELLED instead of running again.
    """
    message = f"run {run} lost its worker (no heartbeat within its visibility timeout)"
    if cancelled is not None:
        message += f"; the job was {cancelled_text(cancelled)}"
    elif failed:
        message += f"; the job failed: lost its worker {run} times"
    else:
        message += "; the job runs again"
    return process_error_event(sequence, message, attempt=run)


def ends_run(last: JobEvent | None, sequence_base: int) -> bool:
    """Whether ``last``, a job's last stored event, ends the current run: it is
    terminal and the run stored it (its sequence is past the run's base)."""
    return (
        last is not None
        and last.event_type in TERMINAL_EVENT_TYPES
        and last.sequence > sequence_base
    )


def exhausted_result(job_id: str, runs: int) -> JobResult:
    """The result of a job whose runs all lost their worker."""
    now = Timestamp.from_nanos(time.time_ns())
    return JobResult(
        job_id=job_id,
        success=False,
        exit_code=NO_EXIT_CODE,
        error_message=f"lost its worker {runs} times",
        completed_at=now,
    )


def visibility_timeout(seconds: int, default: int) -> int:
    """The visibility timeout a request asks for, 0 meaning the store's default."""
    if seconds < 0:
        raise InvalidArgument("visibility_timeout_seconds must not be negative")
    if seconds > MAX_VISIBILITY_TIMEOUT_SECONDS:
        raise InvalidArgument(
            f"visibility_timeout_seconds must be at most {MAX_VISIBILITY_TIMEOUT_SECONDS}"
        )
    return seconds or default


def max_jobs(value: int) -> int:
    """The number of jobs a DequeueJob request asks for, 0 meaning 1."""
    if not 0 <= value <= MAX_JOBS_PER_DEQUEUE:
        raise InvalidArgument(f"max_jobs must be between 1 and {MAX_JOBS_PER_DEQUEUE}")
    return value or 1


def page_args(state: JobState, page: int, page_size: int) -> tuple[int, int]:
    """The 1-based page and page size a ListJobs request asks for."""
    if state not in _STATES:
        raise InvalidArgument(f"state {int(state)} is unknown")
    if page < 0:
        raise InvalidArgument("page must not be negative")
    if not 0 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidArgument(f"page_size must be between 1 and {MAX_PAGE_SIZE}")
    return page or 1, page_size or DEFAULT_PAGE_SIZE


def last_page(total: int, page_size: int) -> int:
    return max(1, -(-total // page_size))


def check_result(result: JobResult | None, token: TaskToken) -> JobResult:
    if result is None:
        raise InvalidArgument("job_result is required")
    if result.job_id != token.job_id:
        raise InvalidArgument("job_result.job_id does not match the task token's job")
    return result


def check_repeated_completion(stored: JobResult, retried: JobResult) -> None:
    """A CompleteJob for a delivery that already completed the job: accepted when
    it repeats the recorded result (its first answer was lost), refused otherwise."""
    if (stored.success, stored.exit_code) != (retried.success, retried.exit_code):
        raise InvalidArgument("the job was already completed with another result")


def check_token_job(token: TaskToken, job_queue: str | None) -> None:
    """The token must name a job that exists (``job_queue`` is None if not) in its queue."""
    if job_queue != token.queue:
        raise InvalidArgument("task token names an unknown job")


def check_token_queue(token: TaskToken, queue: str) -> None:
    """An UpdateJob's queue must be its token's."""
    if token.queue != queue:
        raise InvalidArgument("queue does not match the task token's queue")


def check_events(events: Sequence[JobEvent]) -> None:
    """Refuse, before anything is stored, an event that some reader could not read back."""
    for event in events:
        if not 1 <= event.sequence <= MAX_SEQUENCE:
            raise InvalidArgument(f"event sequence must be between 1 and {MAX_SEQUENCE}")
        if event.event_type not in _EVENT_TYPES:
            raise InvalidArgument(
                f"event {event.sequence} has an unknown event_type {int(event.event_type)}"
            )
        data = event.event_data
        if event.event_type in _STORE_EVENT_TYPES or (
            data is not None and data.field == "output_truncated"
        ):
            raise InvalidArgument(
                f"event {event.sequence}: OUTPUT_TRUNCATED events are the server's own"
            )
        _check_timestamp(event.timestamp, f"event {event.sequence} timestamp")
        if data is not None and data.field == "output_batch":
            batch = data.value
            if batch.start_sequence != event.sequence or not (
                batch.start_sequence <= batch.end_sequence <= MAX_SEQUENCE
            ):
                raise InvalidArgument(
                    f"event {event.sequence}: an output batch covers start_sequence (the "
                    f"event's own) to end_sequence, at most {MAX_SEQUENCE}"
                )
        elif data is not None and data.field == "process_start":
            _check_timestamp(data.value.started_at, f"event {event.sequence} started_at")
        elif data is not None and data.field == "process_end":
            _check_duration(data.value.run_duration, f"event {event.sequence} run_duration")
        elif data is not None and data.field == "heartbeat":
            _check_duration(data.value.elapsed_time, f"event {event.sequence} elapsed_time")
        size = len(event.to_binary())
        if size > MAX_EVENT_BYTES:
            raise InvalidArgument(
                f"event {event.sequence} is {size} bytes encoded; the limit is {MAX_EVENT_BYTES}"
            )


def _check_timestamp(value: Timestamp | None, what: str) -> None:
    """Within what a Timestamp may hold: years 1 to 9999, nanos 0 to 999,999,999."""
    if value is not None and not (
        _MIN_TIMESTAMP_SECONDS <= value.seconds <= _MAX_TIMESTAMP_SECONDS
        and 0 <= value.nanos < 1_000_000_000
    ):
        raise InvalidArgument(f"{what} is not a valid timestamp (years 1 to 9999)")


def _check_duration(value: Duration | None, what: str) -> None:
    """Within what a Duration may hold: +-10,000 years, nanos of the seconds' sign."""
    if value is None:
        return
    seconds, nanos = value.seconds, value.nanos
    if not (
        -_MAX_DURATION_SECONDS <= seconds <= _MAX_DURATION_SECONDS
        and -1_000_000_000 < nanos < 1_000_000_000
        and (seconds == 0 or nanos == 0 or (seconds > 0) == (nanos > 0))
    ):
        raise InvalidArgument(f"{what} is not a valid duration")


def check_event_query(
    job_id: str, from_sequence: int, from_timestamp_ms: int, event_filter: Sequence[EventType]
) -> EventQuery:
    if not job_id:
        raise InvalidArgument("job_id is required")
    if from_sequence < 0:
        raise InvalidArgument("from_sequence must not be negative")
    if from_timestamp_ms < 0:
        raise InvalidArgument("from_timestamp must not be negative")
    types = frozenset(event_filter)
    if unknown := types - _EVENT_TYPES:
        raise InvalidArgument(f"event_filter has unknown event types {sorted(map(int, unknown))}")
    return EventQuery(from_sequence, from_timestamp_ms, types)


# The output cap.


@dataclass
class OutputLedger:
    """How much of a job's output is stored, and where it was cut, if it was.

    Attributes:
        stored_bytes: Output bytes stored so far, over all the job's runs, as
            ``output_bytes`` counts them.
        truncated_at: The stored sequence of the job's OUTPUT_TRUNCATED event;
            no output at or after it is stored.
    """

    stored_bytes: int = 0
    truncated_at: int | None = None


def output_bytes(event: JobEvent) -> int:
    """The bytes of output an event counts toward the cap (0 for events that
    carry none): each item's bytes plus ``OUTPUT_ITEM_OVERHEAD_BYTES``."""
    data = event.event_data
    if data is None:
        return 0
    if data.field == "output_batch":
        return sum(_item_bytes(item.output) for item in data.value.outputs)
    if data.field == "output":
        return _item_bytes(data.value.output)
    return 0


def _item_bytes(output: bytes) -> int:
    return len(output) + OUTPUT_ITEM_OVERHEAD_BYTES


def cap_output(event: JobEvent, ledger: OutputLedger, limit: int) -> Iterator[JobEvent]:
    """What to store for an event new to the job (its sequences already rebased).

    Output that fits under ``limit`` with what is stored already is stored and
    counted in ``ledger``. The event that would pass it is cut to the items that
    fit, and an OUTPUT_TRUNCATED event takes the sequence of the first item left
    out (the event's own, when none fits); output after that is dropped. Events
    that carry no output are stored whatever the ledger says.
    """
    size = output_bytes(event)
    data = event.event_data
    if data is None or data.field not in ("output_batch", "output"):
        yield event
        return
    if ledger.truncated_at is not None:
        return
    if ledger.stored_bytes + size <= limit:
        ledger.stored_bytes += size
        yield event
        return
    kept = 0
    if data.field == "output_batch":
        batch = data.value
        room = limit - ledger.stored_bytes
        # The truncation event needs a sequence of the batch's own range.
        most = batch.end_sequence - batch.start_sequence
        while kept < min(len(batch.outputs), most) and (
            _item_bytes(batch.outputs[kept].output) <= room
        ):
            room -= _item_bytes(batch.outputs[kept].output)
            kept += 1
    if kept:
        cut = trim_output(event, event.sequence + kept)
        assert cut is not None
        ledger.stored_bytes += output_bytes(cut)
        yield cut
    ledger.truncated_at = event.sequence + kept
    truncated = output_truncated_event(
        ledger.truncated_at, event.timestamp, limit, ledger.stored_bytes
    )
    truncated.attempt = event.attempt
    yield truncated


def trim_output(event: JobEvent, truncated_at: int) -> JobEvent | None:
    """The event without the output at or after sequence ``truncated_at``: itself
    if it has none there, None if nothing is left."""
    data = event.event_data
    if data is None or data.field not in ("output_batch", "output"):
        return event
    if data.field == "output" or event.sequence >= truncated_at:
        return event if event.sequence < truncated_at else None
    batch = data.value
    if batch.end_sequence < truncated_at:
        return event
    cut = copy.deepcopy(batch)
    del cut.outputs[truncated_at - batch.start_sequence :]
    cut.end_sequence = truncated_at - 1
    return JobEvent(
        sequence=event.sequence,
        attempt=event.attempt,
        timestamp=copy.deepcopy(event.timestamp),
        event_type=event.event_type,
        event_data=Oneof[Literal["output_batch"], OutputBatchEvent](
            field="output_batch", value=cut
        ),
    )


def output_truncated_event(
    sequence: int, timestamp: Timestamp | None, limit: int, stored: int
) -> JobEvent:
    """The event that says a job's output stops here."""
    return JobEvent(
        sequence=sequence,
        timestamp=copy.deepcopy(timestamp)
        if timestamp is not None
        else Timestamp.from_nanos(time.time_ns()),
        event_type=EventType.OUTPUT_TRUNCATED,
        event_data=Oneof[Literal["output_truncated"], OutputTruncatedEvent](
            field="output_truncated",
            value=OutputTruncatedEvent(limit_bytes=limit, stored_bytes=stored),
        ),
    )
