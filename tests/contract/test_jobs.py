"""The job half of the JobStore contract: enqueue, dequeue, visibility, completion, listing."""

from __future__ import annotations

import uuid

import pytest
import trio
import trio.testing

from airunner.api.job.v1.job_pb import JobParams, JobResult, JobState, ProcessType
from airunner.store import Delivery, InvalidArgument, JobStore, NotFound
from airunner.store.rules import MAX_JOB_PARAMS_BYTES, MAX_VISIBILITY_TIMEOUT_SECONDS
from tests.conftest import Metrics
from tests.helpers import params, request_id, result

from .conftest import POLL


async def enqueue(store: JobStore, queue: str = "default", command: str = "echo") -> str:
    job = await store.enqueue_job(request_id(), queue, params(command))
    return job.job_id


async def dequeue(
    store: JobStore, queue: str = "default", visibility: int = 0, wait: float = POLL
) -> Delivery | None:
    return await store.dequeue_job(queue, visibility, deadline=trio.current_time() + wait)


async def must_dequeue(store: JobStore, queue: str = "default", visibility: int = 0) -> Delivery:
    delivery = await dequeue(store, queue, visibility)
    assert delivery is not None
    return delivery


async def state_of(store: JobStore, job_id: str) -> JobState:
    return (await store.get_job(job_id)).state


# EnqueueJob


async def test_enqueue_creates_scheduled_job_with_uuid7_and_defaults(store: JobStore) -> None:
    job = await store.enqueue_job("r-1", "default", params("make", "test"))
    assert uuid.UUID(job.job_id).version == 7
    assert job.state == JobState.SCHEDULED
    assert job.created_at is not None
    assert job.execution_config is not None
    assert job.execution_config.batching is not None
    assert 0 < job.execution_config.batching.max_batch_bytes <= 256 * 1024
    assert job.execution_config.heartbeat_interval_seconds > 0
    assert job.job_params == params("make", "test")
    stored = await store.get_job(job.job_id)
    assert stored.job_params == params("make", "test")


async def test_job_ids_sort_by_creation(store: JobStore) -> None:
    ids = [await enqueue(store) for _ in range(20)]
    assert ids == sorted(ids)


async def test_same_request_id_returns_first_job_and_creates_nothing(store: JobStore) -> None:
    first = await store.enqueue_job("same", "default", params("echo", "one"))
    delivery = await must_dequeue(store)
    again = await store.enqueue_job("same", "default", params("echo", "two"))
    assert again.job_id == first.job_id
    assert again.created_at == first.created_at
    assert again.state == JobState.RUNNING
    assert delivery.job.job_id == first.job_id
    page = await store.list_jobs("", JobState.UNSPECIFIED, 1, 50)
    assert [job.job_id for job in page.jobs] == [first.job_id]


async def test_racing_enqueues_with_one_request_id_create_one_job(store: JobStore) -> None:
    ids: list[str] = []

    async def submit() -> None:
        job = await store.enqueue_job("raced", "default", params())
        ids.append(job.job_id)

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(submit)
    assert len(set(ids)) == 1
    page = await store.list_jobs("", JobState.UNSPECIFIED, 1, 50)
    assert len(page.jobs) == 1


@pytest.mark.parametrize(
    ("rid", "queue", "job_params", "message"),
    [
        ("", "default", params(), "request_id is required"),
        ("x" * 257, "default", params(), "request_id is longer"),
        ("r", "", params(), "queue is required"),
        ("r", "nope", params(), "unknown queue 'nope'"),
        ("r", "default", None, "job_params is required"),
        ("r", "default", JobParams(repository="/tmp/x"), "job_params.command is required"),
        ("r", "default", params(timeout_seconds=-1), "timeout_seconds must not be negative"),
        ("r", "default", params(process_type=ProcessType(9)), "process_type 9 is unknown"),
        ("r", "default", params("a\0b"), "job_params.command holds a NUL byte"),
        ("r", "default", params("x", "ok", "b\0"), r"job_params.args\[1\] holds a NUL byte"),
        ("r", "default", params(environment={"A": "1\0"}), r"environment\['A'\] holds a NUL"),
        ("r", "default", params(environment={"A=B": "1"}), "hold no '='"),
        ("r", "default", params(environment={"": "1"}), "names are not empty"),
        ("r", "default", params(working_directory="d\0"), "working_directory holds a NUL"),
        (
            "r",
            "default",
            params(environment={"BIG": "x" * MAX_JOB_PARAMS_BYTES}),
            "bytes encoded; the limit is",
        ),
    ],
)
async def test_enqueue_rejects_bad_input(
    store: JobStore, rid: str, queue: str, job_params: JobParams | None, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        await store.enqueue_job(rid, queue, job_params)
    page = await store.list_jobs("", JobState.UNSPECIFIED, 1, 50)
    assert page.jobs == []


# DequeueJob


async def test_dequeue_is_fifo_per_queue(store: JobStore) -> None:
    first = await enqueue(store)
    other = await enqueue(store, "priority")
    second = await enqueue(store)
    assert (await must_dequeue(store)).job.job_id == first
    assert (await must_dequeue(store)).job.job_id == second
    assert (await must_dequeue(store, "priority")).job.job_id == other


async def test_delivered_job_is_running_and_invisible(store: JobStore, clock: object) -> None:
    job_id = await enqueue(store)
    delivery = await must_dequeue(store, visibility=60)
    assert delivery.job.job_id == job_id
    assert delivery.job.state == JobState.RUNNING
    assert delivery.task_token
    assert await state_of(store, job_id) == JobState.RUNNING
    assert await dequeue(store, wait=3) is None


async def test_long_poll_is_woken_by_enqueue(store: JobStore, clock: object, slack: float) -> None:
    got: list[Delivery | None] = []

    async def poll() -> None:
        got.append(await dequeue(store, wait=20))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(poll)
        # Until the poll waits: on the memory store's queue (no time passes on the
        # mock clock, which jumps only when nothing waits for this); for the SQS
        # store, on its poller's ReceiveMessage, sent to moto and not yet answered.
        await trio.testing.wait_all_tasks_blocked()
        job_id = await enqueue(store)
        woken_at = trio.current_time()
    assert got[0] is not None
    assert got[0].job.job_id == job_id
    assert trio.current_time() - woken_at < 1 + slack


async def test_long_poll_ends_with_nothing_when_its_window_closes(
    store: JobStore, clock: object, slack: float
) -> None:
    start = trio.current_time()
    assert await dequeue(store, wait=3) is None
    assert 3 <= trio.current_time() - start < 4 + slack


async def test_each_job_goes_to_one_of_many_waiting_dequeuers(
    store: JobStore, clock: object
) -> None:
    got: list[str] = []

    async def poll() -> None:
        delivery = await dequeue(store, wait=3)
        if delivery is not None:
            got.append(delivery.job.job_id)

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(poll)
        # Until every poll waits (see test_long_poll_is_woken_by_enqueue).
        await trio.testing.wait_all_tasks_blocked()
        ids = [await enqueue(store) for _ in range(3)]
    assert sorted(got) == sorted(ids)


async def test_cancelled_dequeue_delivers_nothing(store: JobStore, clock: object) -> None:
    with trio.move_on_after(1):
        await dequeue(store, wait=3)
    job_id = await enqueue(store)
    assert (await must_dequeue(store)).job.job_id == job_id


@pytest.mark.parametrize(
    ("queue", "visibility", "message"),
    [
        ("", 0, "queue is required"),
        ("nope", 0, "unknown queue"),
        ("default", -1, "must not be negative"),
        ("default", MAX_VISIBILITY_TIMEOUT_SECONDS + 1, "must be at most"),
    ],
)
async def test_dequeue_rejects_bad_input(
    store: JobStore, queue: str, visibility: int, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        await store.dequeue_job(queue, visibility, deadline=trio.current_time() + 1)


# Release


async def test_release_returns_job_to_its_queue_at_once(store: JobStore) -> None:
    first = await enqueue(store)
    second = await enqueue(store)
    delivery = await must_dequeue(store)
    await store.release_job(delivery.task_token)
    assert await state_of(store, first) == JobState.SCHEDULED
    # Both jobs come at once. (SQS keeps no strict order: the released job may
    # come after the other one.)
    again = {d.job.job_id: d for d in [await must_dequeue(store), await must_dequeue(store)]}
    assert set(again) == {first, second}
    assert again[first].task_token != delivery.task_token
    with pytest.raises(InvalidArgument, match="no longer current"):
        await store.complete_job(delivery.task_token, result(first))


# Visibility


async def test_expired_delivery_returns_to_queue_at_its_deadline(
    store: JobStore, clock: object, slack: float
) -> None:
    job_id = await enqueue(store)
    delivered_at = trio.current_time()
    delivery = await must_dequeue(store, visibility=3)
    await trio.sleep_until(delivered_at + 2.9 - slack)
    assert await state_of(store, job_id) == JobState.RUNNING
    await trio.sleep_until(delivered_at + 3 + slack)
    assert await state_of(store, job_id) == JobState.SCHEDULED
    with pytest.raises(InvalidArgument, match="no longer current"):
        await store.complete_job(delivery.task_token, result(job_id))
    with pytest.raises(InvalidArgument, match="no longer current"):
        await store.update_job("default", delivery.task_token, 30)


async def test_waiting_dequeuer_gets_expired_job(
    store: JobStore, clock: object, slack: float
) -> None:
    job_id = await enqueue(store)
    await must_dequeue(store, visibility=3)
    start = trio.current_time()
    again = await dequeue(store, wait=10)
    assert again is not None
    assert again.job.job_id == job_id
    assert trio.current_time() - start == pytest.approx(3, abs=0.5 + slack)


async def test_old_token_fails_after_redelivery(
    store: JobStore, clock: object, slack: float, recorded: Metrics
) -> None:
    before = _job_counts(recorded)
    job_id = await enqueue(store)
    first = await must_dequeue(store, visibility=3)
    await trio.sleep(3.5 + slack)
    second = await must_dequeue(store, visibility=60)
    assert second.job.job_id == job_id
    with pytest.raises(InvalidArgument):
        await store.complete_job(first.task_token, result(job_id))
    await store.complete_job(second.task_token, result(job_id))
    assert await state_of(store, job_id) == JobState.COMPLETED
    after = _job_counts(recorded)
    # Two deliveries, the second a redelivery; one completion.
    assert {name: after[name] - before[name] for name in after} == {
        "enqueued": 1,
        "dequeued": 2,
        "redelivered": 1,
        "completed": 1,
    }


def _job_counts(recorded: Metrics) -> dict[str, float]:
    return {
        "enqueued": recorded.total("airunner.jobs.enqueued.total", queue="default"),
        "dequeued": recorded.total("airunner.jobs.dequeued.total", queue="default"),
        "redelivered": recorded.total("airunner.jobs.redelivered.total", queue="default"),
        "completed": recorded.total(
            "airunner.jobs.completed.total", queue="default", state="COMPLETED"
        ),
    }


async def test_update_extends_visibility_from_now(
    store: JobStore, clock: object, slack: float
) -> None:
    job_id = await enqueue(store)
    start = trio.current_time()
    delivery = await must_dequeue(store, visibility=3)
    await trio.sleep_until(start + 2)
    await store.update_job("default", delivery.task_token, 4)
    await trio.sleep_until(start + 4.5)
    assert await state_of(store, job_id) == JobState.RUNNING
    await store.update_job("default", delivery.task_token, 2)
    await trio.sleep_until(start + 7 + slack)
    assert await state_of(store, job_id) == JobState.SCHEDULED


async def test_update_checks_queue_and_token(store: JobStore) -> None:
    await enqueue(store)
    delivery = await must_dequeue(store)
    with pytest.raises(InvalidArgument, match="does not match"):
        await store.update_job("priority", delivery.task_token, 30)
    with pytest.raises(InvalidArgument, match="unknown queue"):
        await store.update_job("nope", delivery.task_token, 30)
    with pytest.raises(InvalidArgument, match="signature"):
        await store.update_job("default", delivery.task_token[:-2] + "AA", 30)
    with pytest.raises(InvalidArgument, match="must be at most"):
        await store.update_job("default", delivery.task_token, MAX_VISIBILITY_TIMEOUT_SECONDS + 1)


# CompleteJob


@pytest.mark.parametrize(
    ("success", "state"), [(True, JobState.COMPLETED), (False, JobState.FAILED)]
)
async def test_complete_records_result_and_job_never_runs_again(
    store: JobStore, clock: object, slack: float, success: bool, state: JobState
) -> None:
    job_id = await enqueue(store)
    delivery = await must_dequeue(store, visibility=3)
    await store.complete_job(delivery.task_token, result(job_id, success=success, exit_code=3))
    assert await state_of(store, job_id) == state
    await trio.sleep(4 + slack)
    assert await state_of(store, job_id) == state
    assert await dequeue(store, wait=2) is None


async def test_complete_retried_with_same_result_succeeds(store: JobStore) -> None:
    job_id = await enqueue(store)
    delivery = await must_dequeue(store)
    await store.complete_job(delivery.task_token, result(job_id, exit_code=0))
    await store.complete_job(delivery.task_token, result(job_id, exit_code=0))
    with pytest.raises(InvalidArgument, match="already completed"):
        await store.complete_job(delivery.task_token, result(job_id, success=False, exit_code=1))
    assert await state_of(store, job_id) == JobState.COMPLETED


@pytest.mark.parametrize(
    ("token", "job_result", "message"),
    [
        ("", JobResult(job_id="x"), "task_token is required"),
        ("garbage", JobResult(job_id="x"), "malformed"),
        ("v9.a.b", JobResult(job_id="x"), "unsupported version"),
        ("GOOD", None, "job_result is required"),
        ("GOOD", JobResult(job_id="someone-else"), "does not match"),
        ("GOOD", JobResult(), "does not match"),
    ],
)
async def test_complete_rejects_bad_input(
    store: JobStore, token: str, job_result: JobResult | None, message: str
) -> None:
    job_id = await enqueue(store)
    delivery = await must_dequeue(store)
    with pytest.raises(InvalidArgument, match=message):
        await store.complete_job(delivery.task_token if token == "GOOD" else token, job_result)
    assert await state_of(store, job_id) == JobState.RUNNING


async def test_token_from_another_secret_is_refused(store: JobStore) -> None:
    from airunner.store import TaskToken, TaskTokenSigner

    job_id = await enqueue(store)
    await must_dequeue(store)
    forged = TaskTokenSigner(b"not-the-secret").sign(TaskToken(job_id, "default", 1))
    with pytest.raises(InvalidArgument, match="signature"):
        await store.complete_job(forged, result(job_id))


# ListJobs


async def test_list_newest_first_with_filters_and_pages(store: JobStore) -> None:
    defaults = [await enqueue(store, "default") for _ in range(5)]
    priority = [await enqueue(store, "priority") for _ in range(2)]
    delivery = await must_dequeue(store)
    await store.complete_job(delivery.task_token, result(defaults[0]))

    everything = await store.list_jobs("", JobState.UNSPECIFIED, 0, 0)
    assert [job.job_id for job in everything.jobs] == (defaults + priority)[::-1]
    assert everything.last_page == 1

    page1 = await store.list_jobs("default", JobState.UNSPECIFIED, 1, 2)
    page3 = await store.list_jobs("default", JobState.UNSPECIFIED, 3, 2)
    assert [job.job_id for job in page1.jobs] == [defaults[4], defaults[3]]
    assert [job.job_id for job in page3.jobs] == [defaults[0]]
    assert page1.last_page == page3.last_page == 3
    beyond = await store.list_jobs("default", JobState.UNSPECIFIED, 9, 2)
    assert beyond.jobs == []

    scheduled = await store.list_jobs("default", JobState.SCHEDULED, 1, 50)
    assert [job.job_id for job in scheduled.jobs] == defaults[1:][::-1]
    done = await store.list_jobs("", JobState.COMPLETED, 1, 50)
    assert [(job.job_id, job.state) for job in done.jobs] == [(defaults[0], JobState.COMPLETED)]
    assert (await store.list_jobs("priority", JobState.FAILED, 1, 50)).jobs == []


@pytest.mark.parametrize(
    ("queue", "state", "page", "size", "message"),
    [
        ("nope", JobState.UNSPECIFIED, 1, 10, "unknown queue"),
        ("", JobState(42), 1, 10, "state 42 is unknown"),
        ("", JobState.UNSPECIFIED, -1, 10, "page must not be negative"),
        ("", JobState.UNSPECIFIED, 1, -5, "page_size must be between"),
        ("", JobState.UNSPECIFIED, 1, 100_000, "page_size must be between"),
    ],
)
async def test_list_rejects_bad_input(
    store: JobStore, queue: str, state: JobState, page: int, size: int, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        await store.list_jobs(queue, state, page, size)


async def test_get_unknown_job_is_not_found(store: JobStore) -> None:
    with pytest.raises(NotFound):
        await store.get_job("01900000-0000-7000-8000-000000000000")


async def test_returned_jobs_are_copies(store: JobStore) -> None:
    job = await store.enqueue_job("copy", "default", params("echo"))
    assert job.job_params is not None
    job.job_params.command = "rm"
    job.state = JobState.FAILED
    stored = await store.get_job(job.job_id)
    assert stored.job_params is not None
    assert stored.job_params.command == "echo"
    assert stored.state == JobState.SCHEDULED
