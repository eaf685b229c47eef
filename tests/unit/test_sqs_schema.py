"""Job items written before the job record's fields existed still read."""

from __future__ import annotations

from airunner.api.job.v1.job_pb import JobResult, JobState
from airunner.store.sqs import _schema as schema

NOW_MS = 1_800_000_000_000


def _old_item(state: JobState, **extra: object) -> dict[str, object]:
    """A job item as the store wrote it before worker, started_at, finished_at
    and the cancel attributes existed."""
    return {
        "job_id": {"S": "0190aaaa-0000-7000-8000-000000000001"},
        "queue": {"S": "default"},
        "state": {"N": str(int(state))},
        "job_params": {"M": {"command": {"S": "make"}}},
        "request_id": {"S": "r-1"},
        "created_at": {"N": str(NOW_MS - 5000)},
        "updated_at": {"N": str(NOW_MS - 1000)},
        "max_attempts": {"N": "3"},
        "message_id": {"S": "m-1"},
        "attempt": {"N": "1"},
        "runs": {"N": "1"},
        "message_runs": {"N": "1"},
        **extra,
    }


def test_an_old_waiting_job_reads_with_empty_new_fields() -> None:
    item = _old_item(JobState.SCHEDULED, attempt={"N": "0"}, runs={"N": "0"})
    job = schema.job_from_item(item, NOW_MS)
    assert (job.state, job.queue, job.attempt, job.worker) == (
        JobState.SCHEDULED,
        "default",
        0,
        "",
    )
    assert (job.started_at, job.finished_at, job.cancel_requested) == (None, None, False)
    assert not job.has_field("exit_code")


def test_an_old_failed_job_reads_its_end_from_its_result() -> None:
    result = JobResult(job_id="x", success=False, exit_code=2)
    item = _old_item(JobState.FAILED, result={"S": result.to_json()})
    job = schema.job_from_item(item, NOW_MS)
    assert (job.state, job.exit_code, job.failure_reason) == (
        JobState.FAILED,
        2,
        "exited with code 2",
    )
    # No finished_at was stored: its last update is when it ended.
    assert job.finished_at == job.updated_at
    assert job.attempt == 1
