"""Job control in the JobStore contract: the job record says what happened
(GetJob), CancelJob in every state, secrets, and listing by owner."""

from __future__ import annotations

import pytest
import trio

from airunner.api.job.v1.job_pb import EventType, Job, JobEvent, JobResult, JobState
from airunner.store import (
    Delivery,
    EventQuery,
    FailedPrecondition,
    InvalidArgument,
    JobStore,
    NotFound,
)
from airunner.store.rules import MAX_CANCEL_REASON_LENGTH
from tests.helpers import end_event, params, request_id, result, start_event

from .conftest import CONFIRM_SECONDS, POLL
from .test_events import drain
from .test_jobs import dequeue

VISIBILITY = 2
MISSING = "01900000-0000-7000-8000-000000000000"


async def _enqueue(store: JobStore, **fields: object) -> str:
    job = await store.enqueue_job(request_id(), "default", params("make", **fields))
    return job.job_id


async def _deliver(store: JobStore, worker: str = "w1", visibility: int = 0) -> Delivery:
    delivery = await store.dequeue_job(
        ["default"], visibility, deadline=trio.current_time() + POLL, worker_name=worker
    )
    assert delivery is not None
    return delivery


async def _run(store: JobStore, worker: str = "w1", visibility: int = 0) -> Delivery:
    """A delivery its worker took up (its first event): a run."""
    delivery = await _deliver(store, worker, visibility)
    await store.publish_events(delivery.task_token, [start_event(1)])
    return delivery


def _errors(events: list[JobEvent]) -> list[str]:
    return [
        event.event_data.value.error_message  # type: ignore[union-attr]
        for event in events
        if event.event_type == EventType.PROCESS_ERROR
    ]


async def _log(store: JobStore, job_id: str) -> list[JobEvent]:
    async with store.subscribe_events(job_id, EventQuery()) as stream:
        with trio.fail_after(POLL):
            return await drain(stream)


# The job record (GetJob)


async def test_a_new_job_records_its_queue_and_no_run(store: JobStore) -> None:
    job_id = await _enqueue(store)
    job = await store.get_job(job_id)
    assert job.queue == "default"
    assert (job.attempt, job.worker, job.started_at, job.finished_at) == (0, "", None, None)
    assert not job.has_field("exit_code")
    assert (job.failure_reason, job.cancel_requested, job.cancel_reason) == ("", False, "")
    assert not job.timed_out


async def test_a_delivery_records_its_worker_and_its_take_up_counts_an_attempt(
    store: JobStore,
) -> None:
    job_id = await _enqueue(store)
    delivery = await _deliver(store, "worker-a")
    assert (delivery.job.worker, delivery.job.queue) == ("worker-a", "default")
    job = await store.get_job(job_id)
    assert (job.state, job.worker, job.attempt, job.started_at) == (
        JobState.RUNNING,
        "worker-a",
        0,
        None,
    )
    await store.publish_events(delivery.task_token, [start_event(1)])
    job = await store.get_job(job_id)
    assert job.attempt == 1
    assert job.started_at is not None
    assert job.finished_at is None


async def test_a_delivery_nobody_took_up_is_no_attempt(
    store: JobStore, clock: object, slack: float
) -> None:
    job_id = await _enqueue(store)
    await _deliver(store, "frozen", visibility=300)
    await trio.sleep(CONFIRM_SECONDS + slack + 0.5)
    job = await store.get_job(job_id)
    assert (job.state, job.attempt, job.worker) == (JobState.SCHEDULED, 0, "frozen")
    await _run(store, "alive")
    job = await store.get_job(job_id)
    assert (job.state, job.attempt, job.worker) == (JobState.RUNNING, 1, "alive")


@pytest.mark.parametrize(
    ("job_result", "state", "exit_code", "reason"),
    [
        (JobResult(success=True, exit_code=0), JobState.COMPLETED, 0, ""),
        (JobResult(success=False, exit_code=3), JobState.FAILED, 3, "exited with code 3"),
        (
            JobResult(success=False, exit_code=1, error_message="git clone failed"),
            JobState.FAILED,
            1,
            "git clone failed",
        ),
        # The worker sends -1 when the process ended without an exit code.
        (
            JobResult(success=False, exit_code=-1, error_message="command not found: mak"),
            JobState.FAILED,
            None,
            "command not found: mak",
        ),
    ],
)
async def test_completion_records_how_the_run_ended(
    store: JobStore, job_result: JobResult, state: JobState, exit_code: int | None, reason: str
) -> None:
    job_id = await _enqueue(store)
    delivery = await _run(store)
    job_result.job_id = job_id
    await store.complete_job(delivery.task_token, job_result)
    job = await store.get_job(job_id)
    assert job.state == state
    assert (job.exit_code if job.has_field("exit_code") else None) == exit_code
    assert job.failure_reason == reason
    assert not job.timed_out
    assert job.started_at is not None
    assert job.finished_at is not None
    assert job.finished_at.to_nanos() >= job.started_at.to_nanos()
    assert (job.attempt, job.worker) == (1, "w1")


async def test_a_timed_out_run_says_so(store: JobStore) -> None:
    job_id = await _enqueue(store, timeout_seconds=1)
    delivery = await _run(store)
    await store.complete_job(
        delivery.task_token,
        JobResult(
            job_id=job_id,
            success=False,
            exit_code=137,
            error_message="timed out after 1 s",
            timed_out=True,
        ),
    )
    job = await store.get_job(job_id)
    assert (job.state, job.timed_out, job.exit_code) == (JobState.FAILED, True, 137)
    assert job.failure_reason == "timed out after 1 s"


async def test_a_job_that_lost_its_worker_says_so(
    store: JobStore, clock: object, slack: float
) -> None:
    job_id = await _enqueue(store, max_attempts=1)
    await _run(store, visibility=VISIBILITY)
    await trio.sleep(VISIBILITY + slack + 0.5)
    # It fails when its last run is found lost: at once, or at its next receive.
    assert await dequeue(store, wait=3) is None
    job = await store.get_job(job_id)
    assert job.state == JobState.FAILED
    assert job.failure_reason == "lost its worker 1 times"
    assert not job.has_field("exit_code")
    assert job.attempt == 1
    assert job.finished_at is not None


async def test_secrets_are_kept_and_delivered(store: JobStore) -> None:
    secrets = {"API_TOKEN": "s3cret", "DB_PASSWORD": "hunter2"}
    job_id = await _enqueue(store, secrets=secrets, environment={"MODE": "ci"})
    stored = await store.get_job(job_id)
    assert stored.job_params is not None
    assert stored.job_params.secrets == secrets
    delivery = await _deliver(store)
    assert delivery.job.job_params is not None
    assert delivery.job.job_params.secrets == secrets
    assert delivery.job.job_params.environment == {"MODE": "ci"}
    listed = await store.list_jobs("", JobState.UNSPECIFIED, 1, 50)
    assert listed.jobs[0].job_params is not None
    assert listed.jobs[0].job_params.secrets == secrets


# CancelJob


def _assert_cancelled(job: Job, reason: str) -> None:
    assert job.state == JobState.CANCELLED
    assert (job.cancel_requested, job.cancel_reason) == (True, reason)
    assert job.failure_reason == (f"cancelled: {reason}" if reason else "cancelled")
    assert job.finished_at is not None


async def test_a_scheduled_job_is_cancelled_at_once_and_never_delivered(
    store: JobStore, clock: object
) -> None:
    job_id = await _enqueue(store)
    async with store.subscribe_events(job_id, EventQuery()) as stream, trio.open_nursery() as n:
        watched: list[JobEvent] = []

        async def watch() -> None:
            with trio.fail_after(POLL + 5):
                watched.extend(await drain(stream))

        n.start_soon(watch)
        await trio.sleep(0.1)
        job = await store.cancel_job(job_id, "not needed")
        _assert_cancelled(job, "not needed")
    # A watcher's stream ends, and says why.
    assert _errors(watched) == ["cancelled: not needed"]
    _assert_cancelled(await store.get_job(job_id), "not needed")
    # SQS: its message is still in its queue, and is dropped when received.
    assert await dequeue(store, wait=3) is None
    job = await store.get_job(job_id)
    _assert_cancelled(job, "not needed")
    assert (job.attempt, job.worker, job.started_at) == (0, "", None)
    assert not job.has_field("exit_code")
    log = await _log(store, job_id)
    assert _errors(log) == ["cancelled: not needed"]
    # The cancel of a job that never ran is of no run.
    assert [event.attempt for event in log] == [0]


async def test_a_cancelled_job_does_not_hold_up_the_next(store: JobStore) -> None:
    cancelled = await _enqueue(store)
    waiting = await _enqueue(store)
    await store.cancel_job(cancelled, "")
    delivery = await _deliver(store)
    assert delivery.job.job_id == waiting


async def test_a_running_job_is_marked_and_ends_cancelled_whatever_its_result(
    store: JobStore, clock: object
) -> None:
    job_id = await _enqueue(store)
    delivery = await _run(store)
    job = await store.cancel_job(job_id, "wrong branch")
    assert job.state == JobState.RUNNING
    assert (job.cancel_requested, job.cancel_reason) == (True, "wrong branch")
    assert job.finished_at is None
    assert (await store.get_job(job_id)).cancel_requested
    # Its worker goes on until it has stopped the process.
    await store.publish_events(delivery.task_token, [end_event(2, exit_code=143)])
    await store.update_job("default", delivery.task_token, 60)
    await store.complete_job(delivery.task_token, result(job_id, success=True, exit_code=0))
    job = await store.get_job(job_id)
    _assert_cancelled(job, "wrong branch")
    assert job.exit_code == 0
    assert job.attempt == 1
    assert await dequeue(store, wait=2) is None


async def test_cancelling_twice_changes_nothing(store: JobStore) -> None:
    running = await _enqueue(store)
    scheduled = await _enqueue(store)
    delivery = await _run(store)
    first = await store.cancel_job(running, "first")
    again = await store.cancel_job(running, "second")
    assert (again.state, again.cancel_reason) == (JobState.RUNNING, "first")
    assert again.updated_at == first.updated_at
    await store.cancel_job(scheduled, "first")
    # A cancelled job has ended: cancelling it again says so and changes nothing.
    with pytest.raises(FailedPrecondition, match=f"job {scheduled} has already ended: cancelled"):
        await store.cancel_job(scheduled, "second")
    _assert_cancelled(await store.get_job(scheduled), "first")
    await store.complete_job(delivery.task_token, result(running, success=False, exit_code=143))
    with pytest.raises(FailedPrecondition, match="already ended: cancelled"):
        await store.cancel_job(running, "third")
    job = await store.get_job(running)
    _assert_cancelled(job, "first")
    assert job.exit_code == 143


async def test_a_delivery_not_yet_taken_up_is_cancelled_and_never_runs(
    store: JobStore, clock: object, slack: float
) -> None:
    job_id = await _enqueue(store)
    delivery = await _deliver(store)
    job = await store.cancel_job(job_id, "too late")
    _assert_cancelled(job, "too late")
    assert job.attempt == 0
    with pytest.raises(InvalidArgument, match="no longer current"):
        await store.publish_events(delivery.task_token, [start_event(1)])
    with pytest.raises(InvalidArgument, match="no longer current"):
        await store.update_job("default", delivery.task_token, 60)
    await trio.sleep(CONFIRM_SECONDS + slack)
    assert await dequeue(store, wait=2) is None
    job = await store.get_job(job_id)
    _assert_cancelled(job, "too late")
    assert job.attempt == 0
    assert _errors(await _log(store, job_id)) == ["cancelled: too late"]


@pytest.mark.parametrize(("success", "state"), [(True, "completed"), (False, "failed")])
async def test_a_job_that_ended_cannot_be_cancelled(
    store: JobStore, success: bool, state: str
) -> None:
    job_id = await _enqueue(store)
    delivery = await _run(store)
    await store.complete_job(delivery.task_token, result(job_id, success=success, exit_code=0))
    before = await store.get_job(job_id)
    with pytest.raises(FailedPrecondition, match=f"job {job_id} has already ended: {state}"):
        await store.cancel_job(job_id, "late")
    after = await store.get_job(job_id)
    assert after == before
    assert not after.cancel_requested


@pytest.mark.parametrize(
    ("job_id", "reason", "error", "message"),
    [
        (MISSING, "", NotFound, f"job {MISSING} not found"),
        ("", "", InvalidArgument, "job_id is required"),
        ("KNOWN", "x" * (MAX_CANCEL_REASON_LENGTH + 1), InvalidArgument, "reason is longer"),
        ("KNOWN", "a\0b", InvalidArgument, "reason holds a NUL byte"),
    ],
)
async def test_cancel_rejects_bad_input(
    store: JobStore, job_id: str, reason: str, error: type[Exception], message: str
) -> None:
    known = await _enqueue(store)
    with pytest.raises(error, match=message):
        await store.cancel_job(known if job_id == "KNOWN" else job_id, reason)
    assert (await store.get_job(known)).state == JobState.SCHEDULED


async def test_cancel_then_complete_ends_cancelled(store: JobStore) -> None:
    job_id = await _enqueue(store)
    delivery = await _run(store)
    await store.cancel_job(job_id, "stop")
    await store.complete_job(delivery.task_token, result(job_id, success=False, exit_code=1))
    _assert_cancelled(await store.get_job(job_id), "stop")
    # A retried CompleteJob with the same result is accepted, as for any job.
    await store.complete_job(delivery.task_token, result(job_id, success=False, exit_code=1))


async def test_complete_then_cancel_leaves_it_completed(store: JobStore) -> None:
    job_id = await _enqueue(store)
    delivery = await _run(store)
    await store.complete_job(delivery.task_token, result(job_id))
    with pytest.raises(FailedPrecondition, match="already ended: completed"):
        await store.cancel_job(job_id, "stop")
    assert (await store.get_job(job_id)).state == JobState.COMPLETED


async def _cancel_racing_complete(store: JobStore) -> tuple[str, list[Job], list[Exception]]:
    """Cancel a running job while its worker completes it, both at once."""
    job_id = await _enqueue(store)
    delivery = await _run(store)
    cancelled: list[Job] = []
    refused: list[Exception] = []

    async def cancel() -> None:
        try:
            cancelled.append(await store.cancel_job(job_id, "raced"))
        except FailedPrecondition as e:
            refused.append(e)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(cancel)
        nursery.start_soon(store.complete_job, delivery.task_token, result(job_id))
    return job_id, cancelled, refused


async def test_cancel_racing_complete_ends_in_one_final_state(
    store: JobStore, clock: object
) -> None:
    """Whichever wins, the job ends once; a cancel that succeeded makes it CANCELLED."""
    for _ in range(3):
        job_id, cancelled, refused = await _cancel_racing_complete(store)
        job = await store.get_job(job_id)
        if cancelled:
            assert cancelled[0].state in (JobState.RUNNING, JobState.CANCELLED)
            _assert_cancelled(job, "raced")
        else:
            assert len(refused) == 1
            assert job.state == JobState.COMPLETED
            assert not job.cancel_requested
        assert await dequeue(store, wait=1) is None


async def test_a_cancelled_run_whose_delivery_runs_out_ends_cancelled_and_never_runs_again(
    store: JobStore, clock: object, slack: float
) -> None:
    job_id = await _enqueue(store)
    delivery = await _run(store, visibility=VISIBILITY)
    await store.cancel_job(job_id, "hung")
    await trio.sleep(VISIBILITY + slack + 0.5)
    # It ends when its delivery is found over: at once, or at its message's next receive.
    assert await dequeue(store, wait=3) is None
    job = await store.get_job(job_id)
    _assert_cancelled(job, "hung")
    assert job.attempt == 1
    assert not job.has_field("exit_code")
    with pytest.raises(InvalidArgument, match="no longer current"):
        await store.complete_job(delivery.task_token, result(job_id))
    assert _errors(await _log(store, job_id)) == [
        "run 1 lost its worker (no heartbeat within its visibility timeout);"
        " the job was cancelled: hung"
    ]
    assert await dequeue(store, wait=2) is None


# ListJobs by owner


async def test_list_filters_by_owner_with_pages(store: JobStore) -> None:
    alice = [await _enqueue(store, owner="alice") for _ in range(3)]
    await _enqueue(store, owner="bob")
    await _enqueue(store)
    mine = await store.list_jobs("", JobState.UNSPECIFIED, 1, 50, owner="alice")
    assert [job.job_id for job in mine.jobs] == alice[::-1]
    first = await store.list_jobs("default", JobState.UNSPECIFIED, 1, 2, owner="alice")
    second = await store.list_jobs("default", JobState.UNSPECIFIED, 2, 2, owner="alice")
    assert [job.job_id for job in first.jobs + second.jobs] == alice[::-1]
    assert first.last_page == second.last_page == 2
    scheduled = await store.list_jobs("", JobState.SCHEDULED, 1, 50, owner="bob")
    assert len(scheduled.jobs) == 1
    assert (await store.list_jobs("", JobState.UNSPECIFIED, 1, 50, owner="carol")).jobs == []
    everyone = await store.list_jobs("", JobState.UNSPECIFIED, 1, 50)
    assert len(everyone.jobs) == 5
