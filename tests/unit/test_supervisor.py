"""supervise: an actor's crash is logged, then restarts it or stops the server."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from airunner.actors import RESTART_BACKOFF_INITIAL, supervise


class Flaky:
    """Crashes ``crashes`` times after it started, then runs until cancelled."""

    name = "flaky actor"

    def __init__(self, crashes: int, *, restartable: bool = True) -> None:
        self.restartable = restartable
        self.crashes = crashes
        self.runs: list[float] = []

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        self.runs.append(trio.current_time())
        task_status.started("ready")
        await trio.sleep(1)
        if len(self.runs) <= self.crashes:
            raise RuntimeError(f"crash {len(self.runs)}")
        await trio.sleep_forever()


async def test_restartable_actor_restarts_with_growing_backoff(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    actor = Flaky(crashes=3)
    async with trio.open_nursery() as nursery:
        assert await nursery.start(supervise, actor) == "ready"
        # Not a wait for the fourth run (6.5 s in, on the mock clock): the rest
        # of the minute shows that no restart follows once the actor runs.
        await trio.sleep(60)
        nursery.cancel_scope.cancel()
    assert len(actor.runs) == 4
    gaps = [
        later - earlier - 1 for earlier, later in zip(actor.runs, actor.runs[1:], strict=False)
    ]
    assert gaps == pytest.approx(
        [RESTART_BACKOFF_INITIAL, RESTART_BACKOFF_INITIAL * 2, RESTART_BACKOFF_INITIAL * 4]
    )
    assert caplog.text.count("flaky actor crashed") == 3
    assert "RuntimeError: crash 1" in caplog.text


async def test_other_actor_crash_stops_the_server(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    actor = Flaky(crashes=1, restartable=False)
    with pytest.RaisesGroup(
        pytest.RaisesExc(RuntimeError, match="crash 1"), flatten_subgroups=True
    ):
        async with trio.open_nursery() as nursery:
            await nursery.start(supervise, actor)
    assert len(actor.runs) == 1
    assert "flaky actor crashed" in caplog.text


class NeverReady:
    name = "broken actor"
    restartable = True

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        raise OSError("cannot bind")


async def test_crash_before_ready_fails_the_start() -> None:
    with pytest.RaisesGroup(pytest.RaisesExc(OSError, match="cannot bind")):
        async with trio.open_nursery() as nursery:
            await nursery.start(supervise, NeverReady())
