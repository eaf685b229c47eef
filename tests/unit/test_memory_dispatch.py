"""The memory store hands a new job to one waiting dequeuer, the longest waiting.

Dispatch must not cost more with more idle workers: a job wakes one dequeuer,
not every one, and the rest stay asleep (not woken to look and sleep again).
"""

from __future__ import annotations

import trio
import trio.lowlevel
import trio.testing

from airunner.store import Delivery, MemoryJobStore
from tests.helpers import params

WAITERS = 20


class _Steps(trio.abc.Instrument):
    """Counts the steps each task takes."""

    def __init__(self) -> None:
        self.steps: dict[trio.lowlevel.Task, int] = {}

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps[task] = self.steps.get(task, 0) + 1


async def _dequeuers(
    store: MemoryJobStore,
    nursery: trio.Nursery,
    got: dict[int, Delivery | None],
    queues: list[str],
) -> list[trio.CancelScope]:
    """Start WAITERS dequeuers one after the other; each records what it got."""
    scopes = []
    for number in range(WAITERS):
        scope = trio.CancelScope()

        async def dequeue(number: int = number, scope: trio.CancelScope = scope) -> None:
            with scope:
                got[number] = await store.dequeue_job(
                    queues, 300, deadline=trio.current_time() + 3600
                )

        nursery.start_soon(dequeue)
        await trio.testing.wait_all_tasks_blocked()
        scopes.append(scope)
    return scopes


async def test_a_new_job_wakes_only_the_longest_waiting_dequeuer() -> None:
    store = MemoryJobStore()
    got: dict[int, Delivery | None] = {}
    async with trio.open_nursery() as nursery:
        await _dequeuers(store, nursery, got, ["default"])
        assert len(store._queues["default"].waiters) == WAITERS

        steps = _Steps()
        trio.lowlevel.add_instrument(steps)
        job = await store.enqueue_job("r1", "default", params())
        await trio.testing.wait_all_tasks_blocked()
        trio.lowlevel.remove_instrument(steps)

        assert list(got) == [0]
        delivery = got[0]
        assert delivery is not None
        assert delivery.job.job_id == job.job_id
        assert len(store._queues["default"].waiters) == WAITERS - 1
        # This task and the one dequeuer ran; the others slept through it.
        woken = [task for task in steps.steps if task is not trio.lowlevel.current_task()]
        assert len(woken) == 1
        nursery.cancel_scope.cancel()


async def test_a_woken_dequeuer_cancelled_passes_the_job_to_the_next() -> None:
    store = MemoryJobStore()
    got: dict[int, Delivery | None] = {}
    async with trio.open_nursery() as nursery:
        scopes = await _dequeuers(store, nursery, got, ["priority", "default"])

        # The first dequeuer is cancelled, and the job made ready, before it runs.
        scopes[0].cancel()
        job = await store.enqueue_job("r1", "default", params())
        await trio.testing.wait_all_tasks_blocked()

        assert 0 not in got
        assert list(got) == [1]
        delivery = got[1]
        assert delivery is not None
        assert delivery.job.job_id == job.job_id
        for name in ("priority", "default"):
            assert len(store._queues[name].waiters) == WAITERS - 2
            assert store._queues[name].woken == 0
        nursery.cancel_scope.cancel()


async def test_jobs_on_two_queues_reach_two_dequeuers_of_both() -> None:
    store = MemoryJobStore()
    got: dict[int, Delivery | None] = {}
    async with trio.open_nursery() as nursery:
        await _dequeuers(store, nursery, got, ["priority", "default"])

        # Both made ready before the first woken dequeuer runs: it takes the
        # priority job and the next dequeuer the other.
        async with trio.open_nursery() as enqueuers:
            enqueuers.start_soon(store.enqueue_job, "r1", "default", params())
            enqueuers.start_soon(store.enqueue_job, "r2", "priority", params())
        await trio.testing.wait_all_tasks_blocked()

        assert sorted(got) == [0, 1]
        first, second = got[0], got[1]
        assert first is not None
        assert first.job.queue == "priority"
        assert second is not None
        assert second.job.queue == "default"
        assert len(store._queues["default"].waiters) == WAITERS - 2
        nursery.cancel_scope.cancel()
