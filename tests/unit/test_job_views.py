"""How list, get and the exit status show a job's record."""

from __future__ import annotations

import re

import pytest
from protobuf.wkt import Timestamp

from airunner.api.job.v1.job_pb import Job, JobParams, JobState
from airunner.cli import render_table
from airunner.cli._get import render_job
from airunner.cli._list import without_secrets
from airunner.cli._monitor import exit_status
from airunner.cli.main import parse_args
from airunner.store.rules import RETRY_OF_METADATA

NOW = 1_000_000


def _job(**fields: object) -> Job:
    fields.setdefault("job_params", JobParams(command="make", args=["test"]))
    return Job(
        job_id="01900000-0000-7000-8000-000000000000",
        created_at=Timestamp.from_seconds(NOW - 3 * 3600),
        queue="priority",
        **fields,  # type: ignore[arg-type]
    )


def test_table_columns() -> None:
    finished = _job(
        state=JobState.FAILED,
        attempt=2,
        worker="box-1",
        exit_code=3,
        started_at=Timestamp.from_seconds(NOW - 100),
        finished_at=Timestamp.from_seconds(NOW - 10),
    )
    running = _job(
        state=JobState.RUNNING,
        attempt=1,
        worker="box-2",
        started_at=Timestamp.from_seconds(NOW - 65),
        cancel_requested=True,
    )
    waiting = _job(state=JobState.SCHEDULED)
    lines = render_table([finished, running, waiting], now=NOW).splitlines()
    assert lines[0].split() == [
        "ID", "QUEUE", "STATE", "ATTEMPT", "WORKER", "EXIT", "DURATION", "AGE", "COMMAND"
    ]  # fmt: skip
    assert lines[1].split()[1:] == [
        "priority", "failed", "2", "box-1", "3", "1m", "3h", "make", "test"
    ]  # fmt: skip
    assert lines[2].split()[1:] == [
        "priority", "running", "(cancelling)", "1", "box-2", "-", "1m", "3h", "make", "test"
    ]  # fmt: skip
    assert lines[3].split()[1:] == [
        "priority", "scheduled", "0", "-", "-", "-", "3h", "make", "test"
    ]  # fmt: skip


def test_get_shows_the_record_and_secret_names_only() -> None:
    job = without_secrets(
        _job(
            state=JobState.CANCELLED,
            job_params=JobParams(
                command="sh",
                args=["-c", "echo hi"],
                owner="alice",
                secrets={"API_KEY": "hidden-value"},
                metadata={RETRY_OF_METADATA: "earlier-job", "team": "ci"},
            ),
            attempt=1,
            worker="box-1",
            cancel_reason="not needed",
            failure_reason="cancelled: not needed",
        )
    )
    text = render_job(job, NOW)
    assert "hidden-value" not in text
    assert "hidden-value" not in job.to_json()
    rows = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in text.splitlines())
    assert rows["state"] == "cancelled"
    assert rows["queue"] == "priority"
    assert rows["owner"] == "alice"
    assert rows["command"] == "sh -c 'echo hi'"
    assert rows["worker"] == "box-1"
    assert rows["started"] == rows["exit code"] == "-"
    assert rows["failure"] == "cancelled: not needed"
    assert rows["cancelled"] == "yes: not needed"
    assert rows["secrets"] == "API_KEY (values not shown)"
    assert rows["retry of"] == "earlier-job"
    assert rows["metadata team"] == "ci"


@pytest.mark.parametrize(
    ("job", "from_events", "status"),
    [
        (_job(state=JobState.COMPLETED, exit_code=0), 0, 0),
        (_job(state=JobState.FAILED, exit_code=3), 3, 3),
        (_job(state=JobState.FAILED, exit_code=-9, timed_out=True), 1, 124),
        (_job(state=JobState.CANCELLED, exit_code=-15), None, 125),
        (_job(state=JobState.CANCELLED), None, 125),
        (_job(state=JobState.FAILED, failure_reason="checkout failed"), None, 1),
        (None, 7, 7),
        (None, None, 1),
    ],
)
def test_exit_status(job: Job | None, from_events: int | None, status: int) -> None:
    assert exit_status(job, from_events) == status


def test_a_failure_without_an_exit_code_prints_its_reason(
    capsys: pytest.CaptureFixture[str],
) -> None:
    exit_status(_job(state=JobState.FAILED, failure_reason="checkout failed: no repo"), None)
    assert capsys.readouterr().err == "airunner: job failed: checkout failed: no repo\n"


@pytest.mark.parametrize("name", ["running", "RUNNING", "Running"])
def test_list_state_in_any_case(name: str) -> None:
    assert parse_args(["list", "--state", name]).state == JobState.RUNNING


def test_list_bad_state_names_the_valid_ones(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["list", "--state", "done"])
    assert (
        "unknown state 'done': use one of scheduled, running, completed, failed, cancelled"
        in capsys.readouterr().err
    )
