"""Cancelling jobs and hiding their secrets, with a real server, worker processes and jobs."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from airunner.api.job.v1.job_pb import (
    CancelJobRequest,
    EventType,
    Job,
    JobParams,
    JobState,
    ProcessType,
)
from airunner.client import AirunnerClient
from airunner.store import EventQuery, MemoryJobStore, NotFound, Unavailable
from airunner.worker import JOB_ID_VARIABLE, Worker, WorkerSettings
from tests.helpers import eventually, request_id

from .conftest import Clients, run_server
from .test_jobs_run import Cli

pytestmark = pytest.mark.e2e

# Short, so that each test takes seconds: checks five times a second.
CHECK = "0.2"
SECRET = "s3cr3t-VALUE-9876"


@pytest.fixture
async def cli(tmp_path: Path) -> AsyncIterator[Cli]:
    async with run_server(poll_window=5) as running:
        yield Cli(running, tmp_path / "work")


@pytest.fixture
def clients(cli: Cli) -> Iterator[Clients]:
    made = Clients(cli.server.url)
    yield made
    made.close()


def _sh(script: str, **fields: object) -> JobParams:
    return JobParams(command="sh", args=["-c", script], **fields)  # type: ignore[arg-type]


def naming(job_id: str) -> list[int]:
    """The processes whose environment names the job: every process it started."""
    mark = f"{JOB_ID_VARIABLE}={job_id}".encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if mark in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


async def _enqueue(cli: Cli, params: JobParams) -> Job:
    return await cli.server.store.enqueue_job(request_id(), "default", params)


async def _ended(cli: Cli, job_id: str, seconds: float) -> Job:
    """The job once it has ended, within ``seconds``."""
    store = cli.server.store
    with trio.fail_after(seconds):
        while (job := await store.get_job(job_id)).state in (  # noqa: ASYNC110
            JobState.SCHEDULED,
            JobState.RUNNING,
        ):
            await trio.sleep(0.05)
    return job


async def _events(cli: Cli, job_id: str) -> tuple[bytes, list[str]]:
    """The job's stored output, and its PROCESS_ERROR messages."""
    output, errors = b"", []
    async with cli.server.store.subscribe_events(job_id, EventQuery()) as stream:
        with trio.fail_after(10):
            while (event := await stream.receive()) is not None:
                if event.event_type == EventType.OUTPUT_BATCH:
                    batch = event.event_data.value  # type: ignore[union-attr]
                    output += b"".join(item.output for item in batch.outputs)  # type: ignore[union-attr]
                elif event.event_type == EventType.PROCESS_ERROR:
                    errors.append(event.event_data.value.error_message)  # type: ignore[union-attr]
    return output, errors


async def test_a_running_pty_job_is_cancelled_and_leaves_nothing(
    cli: Cli, clients: Clients
) -> None:
    async with cli.worker("--cancel-check-interval", CHECK, "--cancel-grace", "5") as worker:
        job = await _enqueue(cli, _sh("echo started; sleep 1000", process_type=ProcessType.PTY))
        await eventually(lambda: len(naming(job.job_id)) >= 2)
        await clients.call(
            clients.jobs.cancel_job, CancelJobRequest(job_id=job.job_id, reason="not needed")
        )
        # sleep ends on SIGTERM: well within the check interval and the grace.
        ended = await _ended(cli, job.job_id, 5)
        assert ended.state == JobState.CANCELLED
        assert naming(job.job_id) == []
        output, errors = await _events(cli, job.job_id)
        assert b"started" in output
        assert errors == ["cancelled: not needed; its process group was stopped"]
        await worker.logged(f"job {job.job_id}: cancelled: not needed; stopping it")


async def test_a_job_that_ignores_sigterm_is_killed_after_the_grace(
    cli: Cli, clients: Clients
) -> None:
    async with cli.worker("--cancel-check-interval", CHECK, "--cancel-grace", "1"):
        job = await _enqueue(cli, _sh("trap '' TERM; echo ready; while :; do sleep 0.1; done"))
        await eventually(lambda: len(naming(job.job_id)) >= 2)
        await clients.call(clients.jobs.cancel_job, CancelJobRequest(job_id=job.job_id))
        cancelled_at = trio.current_time()
        ended = await _ended(cli, job.job_id, 10)
        assert ended.state == JobState.CANCELLED
        # Not at the SIGTERM: a second later, by SIGKILL (128 + 9).
        assert trio.current_time() - cancelled_at >= 1
        assert ended.exit_code == 137
        assert naming(job.job_id) == []


async def test_a_job_cancelled_before_any_worker_came_never_runs(
    cli: Cli, clients: Clients, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    job = await _enqueue(cli, _sh(f"touch {marker}"))
    await clients.call(clients.jobs.cancel_job, CancelJobRequest(job_id=job.job_id))
    async with cli.worker("--cancel-check-interval", CHECK):
        # Submitted after it: once this one ran, the worker has polled past the first.
        later = await _enqueue(cli, _sh("true"))
        assert (await _ended(cli, later.job_id, 30)).state == JobState.COMPLETED
    assert (await cli.server.store.get_job(job.job_id)).state == JobState.CANCELLED
    assert not marker.exists()


@pytest.mark.parametrize("process_type", [ProcessType.PIPE, ProcessType.PTY])
async def test_a_jobs_secret_is_in_its_environment_and_never_in_its_output(
    cli: Cli, process_type: ProcessType
) -> None:
    # The value in two writes, then whole on stderr and once more inside a word.
    script = (
        'printf %s "${TOKEN%????????}"; printf "%s\\n" "${TOKEN#?????????}";'
        ' echo "$TOKEN" >&2; echo "x${TOKEN}y"; test "$TOKEN" = ' + SECRET
    )
    async with cli.worker():
        job = await _enqueue(
            cli, _sh(script, secrets={"TOKEN": SECRET}, process_type=process_type)
        )
        ended = await _ended(cli, job.job_id, 30)
    assert ended.state == JobState.COMPLETED, ended.failure_reason
    output, _ = await _events(cli, job.job_id)
    assert SECRET.encode() not in output
    newline = b"\r\n" if process_type == ProcessType.PTY else b"\n"
    assert output.count(b"[REDACTED]" + newline) == 2
    assert b"x[REDACTED]y" + newline in output


async def test_a_secret_is_redacted_from_the_messages_the_worker_publishes(cli: Cli) -> None:
    async with cli.worker() as worker:
        job = await _enqueue(
            cli, JobParams(command=f"/nowhere/{SECRET}", secrets={"TOKEN": SECRET})
        )
        ended = await _ended(cli, job.job_id, 30)
        await worker.logged(f"job {job.job_id}: command not found: /nowhere/[REDACTED]")
    assert SECRET.encode() not in worker.log
    assert ended.state == JobState.FAILED
    assert ended.failure_reason == "command not found: /nowhere/[REDACTED]"
    _, errors = await _events(cli, job.job_id)
    assert errors == ["command not found: /nowhere/[REDACTED]"]


async def test_a_job_past_its_timeout_is_recorded_as_timed_out(cli: Cli) -> None:
    async with cli.worker():
        job = await _enqueue(cli, _sh("sleep 1000", timeout_seconds=1))
        ended = await _ended(cli, job.job_id, 30)
    assert ended.state == JobState.FAILED
    assert ended.timed_out
    assert naming(job.job_id) == []


class ForgetfulStore(MemoryJobStore):
    """A memory store whose GetJob fails for a while, then no longer knows the job."""

    def __init__(self, failures: int) -> None:
        super().__init__(token_secret=b"e2e-secret")
        self.failures = failures
        self.asked: list[tuple[float, str]] = []

    async def get_job(self, job_id: str) -> Job:
        self.asked.append((trio.current_time(), job_id))
        if len(self.asked) <= self.failures:
            raise Unavailable("the store is down for a moment")
        raise NotFound(f"job {job_id} not found")

    async def recorded(self, job_id: str) -> Job:
        """The job as the store keeps it, not as GetJob answers."""
        return await super().get_job(job_id)


async def test_a_job_whose_checks_fail_runs_on_and_one_the_server_forgot_is_stopped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = ForgetfulStore(failures=3)
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    async with run_server(store=store) as running:
        job = await store.enqueue_job(request_id(), "default", _sh("sleep 1000"))
        # Jobs waiting behind it cost nothing: only the running job is asked about.
        for _ in range(5):
            await store.enqueue_job(request_id(), "default", _sh("true"))
        async with AirunnerClient(running.url) as client:
            worker = Worker(
                client,
                WorkerSettings(work_dir=work_dir, cancel_check_interval=0.1, cancel_grace=1),
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(worker.run)
                with trio.fail_after(20):
                    while (ended := await store.recorded(job.job_id)).state in (  # noqa: ASYNC110
                        JobState.SCHEDULED,
                        JobState.RUNNING,
                    ):
                        await trio.sleep(0.05)
                worker.stop.set()
                nursery.cancel_scope.cancel()
    assert ended.state == JobState.FAILED
    assert ended.failure_reason == (
        "the server no longer knows the job; its process group was stopped"
    )
    # The worker runs in this process, which is no subreaper: the job's killed
    # `sleep`, orphaned when its shell died, is init's to reap, a moment later.
    with trio.fail_after(5):
        while naming(job.job_id):  # noqa: ASYNC110
            await trio.sleep(0.05)
    assert [asked for _, asked in store.asked[:4]] == [job.job_id] * 4
    # A failed check is asked again later and later: 0.2, 0.4, 0.8 s.
    times = [at for at, _ in store.asked[:5]]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(gap >= 0.1 * 2**i for i, gap in enumerate(gaps, start=1)), gaps
    warnings = [r.getMessage() for r in caplog.records if "could not ask" in r.getMessage()]
    assert len(warnings) == 3
    assert "the store is down for a moment" in warnings[0]
