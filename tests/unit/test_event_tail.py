"""The event tail looks at each watched job on its own pace: soon after news,
backing off while a running job is quiet, seldom while a job does not run."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import pytest
import trio
import trio.testing

from airunner.actors import EventTail, TailPace

PACE = TailPace(fast=0.1, running=0.25, idle=1.0)  # not the defaults: the rule, not the values


class _Jobs:
    """What the tail looks at: each job's summary and whether it runs; every look recorded."""

    def __init__(self) -> None:
        self.summary: dict[str, int] = {}
        self.running: dict[str, bool] = {}
        self.looks: list[tuple[float, tuple[str, ...]]] = []
        self.told: list[tuple[float, str, Hashable]] = []

    async def look(self, job_ids: Sequence[str]) -> dict[str, tuple[Hashable, bool]]:
        self.looks.append((round(trio.current_time(), 3), tuple(sorted(job_ids))))
        return {job_id: (self.summary[job_id], self.running[job_id]) for job_id in job_ids}

    def notify(self, job_id: str, summary: Hashable) -> None:
        self.told.append((round(trio.current_time(), 3), job_id, summary))

    def looks_at(self, job_id: str) -> list[float]:
        return [when for when, looked in self.looks if job_id in looked]


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def test_a_quiet_running_job_is_looked_at_ever_less_often_up_to_the_running_pause(
    clock: trio.testing.MockClock,
) -> None:
    jobs = _Jobs()
    jobs.summary["a"], jobs.running["a"] = 0, True
    tail = EventTail(jobs.look, jobs.notify, pace=PACE)
    async with trio.open_nursery() as nursery:
        await nursery.start(tail.run)
        with tail.watching("a"):
            await trio.sleep(1.0)
        nursery.cancel_scope.cancel()
    # The first look tells (nothing was seen before), so the next comes fast;
    # then the pause doubles up to the running pause.
    assert jobs.looks_at("a") == [0.0, 0.1, 0.3, 0.55, 0.8]
    assert jobs.told == [(0.0, "a", 0)]


async def test_news_brings_the_next_look_soon_and_is_told_once(
    clock: trio.testing.MockClock,
) -> None:
    jobs = _Jobs()
    jobs.summary["a"], jobs.running["a"] = 0, True
    tail = EventTail(jobs.look, jobs.notify, pace=PACE)
    async with trio.open_nursery() as nursery:
        await nursery.start(tail.run)
        with tail.watching("a"):
            await trio.sleep(0.6)
            jobs.summary["a"] = 7  # another replica stored up to sequence 7
            await trio.sleep(0.6)
        nursery.cancel_scope.cancel()
    assert jobs.looks_at("a") == [0.0, 0.1, 0.3, 0.55, 0.8, 0.9, 1.1]
    assert jobs.told == [(0.0, "a", 0), (0.8, "a", 7)]


async def test_a_job_that_does_not_run_is_looked_at_every_idle_pause_and_jobs_due_share_a_look(
    clock: trio.testing.MockClock,
) -> None:
    jobs = _Jobs()
    for job_id in ("waiting", "other"):
        jobs.summary[job_id], jobs.running[job_id] = 0, False
    tail = EventTail(jobs.look, jobs.notify, pace=PACE)
    async with trio.open_nursery() as nursery:
        await nursery.start(tail.run)
        with tail.watching("waiting"), tail.watching("other"):
            await trio.sleep(2.5)
        nursery.cancel_scope.cancel()
    # Told on the first look, so looked at soon once; then every idle pause.
    assert jobs.looks == [
        (0.0, ("other", "waiting")),
        (0.1, ("other", "waiting")),
        (1.1, ("other", "waiting")),
        (2.1, ("other", "waiting")),
    ]


async def test_nothing_is_read_while_nobody_watches_and_a_new_watcher_is_looked_at_at_once(
    clock: trio.testing.MockClock,
) -> None:
    jobs = _Jobs()
    jobs.summary["a"], jobs.running["a"] = 0, False
    jobs.summary["b"], jobs.running["b"] = 0, False
    tail = EventTail(jobs.look, jobs.notify, pace=PACE)
    async with trio.open_nursery() as nursery:
        await nursery.start(tail.run)
        await trio.sleep(5)
        assert jobs.looks == []
        with tail.watching("a"):
            await trio.sleep(0.5)
            with tail.watching("b"):
                await trio.sleep(0.05)
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    assert jobs.looks == [(5.0, ("a",)), (5.1, ("a",)), (5.5, ("b",))]
