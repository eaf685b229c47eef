"""OrphanReaper's view of running jobs, with real processes."""

from __future__ import annotations

import os

import trio
import trio.testing

from airunner.worker import JOB_ID_VARIABLE, OrphanReaper
from tests.helpers import eventually


async def test_a_job_started_while_a_sweep_waits_keeps_its_processes() -> None:
    reaper = OrphanReaper(enabled=True)
    swept = trio.Event()

    with reaper.track("ending") as ending:

        async def end_job() -> None:
            await ending.ended()
            swept.set()

        # Another sweep holds the reaper: this job's waits its turn.
        await reaper._lock.acquire()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(end_job)
            await trio.testing.wait_all_tasks_blocked()
            with reaper.track("started-meanwhile"):
                # A process the new job started, that no one holds.
                child = await trio.lowlevel.open_process(
                    ["sleep", "30"],
                    env={"PATH": os.environ["PATH"], JOB_ID_VARIABLE: "started-meanwhile"},
                )
                try:
                    await eventually(lambda: _names_a_job(child.pid))
                    reaper._lock.release()
                    with trio.fail_after(10):
                        await swept.wait()
                    assert child.poll() is None, "the sweep killed a running job's process"
                finally:
                    child.kill()
                    await child.wait()


def _names_a_job(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return JOB_ID_VARIABLE.encode() in f.read()
    except OSError:
        return False
