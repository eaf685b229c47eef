"""A worker process serving several queues, the first first (memory store)."""

from __future__ import annotations

from pathlib import Path

import pytest

from airunner.api.job.v1.job_pb import JobParams, JobState

from .test_jobs_run import Cli, cli  # noqa: F401 (the fixture)

pytestmark = pytest.mark.e2e


async def test_a_worker_of_priority_then_default_drains_priority_first(
    cli: Cli,  # noqa: F811
    tmp_path: Path,
) -> None:
    store = cli.server.store
    ran = tmp_path / "ran"
    # Each job notes its name, and outlives a heartbeat (every second with a
    # 3 s visibility): the heartbeats must name the job's own queue.
    jobs = []
    for queue, name in [
        ("default", "d1"),
        ("default", "d2"),
        ("priority", "p1"),
        ("priority", "p2"),
    ]:
        script = f"echo {name} >> {ran}; sleep 1.5"
        job = await store.enqueue_job(name, queue, JobParams(command="sh", args=["-c", script]))
        jobs.append(job.job_id)
    async with cli.worker(
        "--queue", "priority", "--queue", "default", "--visibility-timeout", "3"
    ):
        for job_id in jobs:
            done = await cli.run("monitor", job_id)
            assert done.returncode == 0, done.stderr
    assert ran.read_text().split() == ["p1", "p2", "d1", "d2"]
    for job_id in jobs:
        assert (await store.get_job(job_id)).state == JobState.COMPLETED
