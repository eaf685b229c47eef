"""VisibilitySweeper: returns expired deliveries to their queue when they expire."""

from __future__ import annotations

import math
from typing import Any, Protocol

import trio


class ExpiringDeliveries(Protocol):
    """What the sweeper needs from a store that keeps its own delivery deadlines."""

    def expiry_changed(self) -> trio.Event: ...

    def next_expiry(self) -> float | None: ...

    def expire_due(self, now: float) -> None: ...


class VisibilitySweeper:
    """Sleeps until the earliest delivery deadline, then expires what is due.

    A new, earlier deadline wakes it through ``expiry_changed``, so each
    delivery returns to its queue at its deadline, not at the next tick of a timer.
    """

    name = "visibility sweeper"
    # Its state lives in the store, so a restart loses nothing.
    restartable = True

    def __init__(self, deliveries: ExpiringDeliveries) -> None:
        self._deliveries = deliveries

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            changed = self._deliveries.expiry_changed()
            deadline = self._deliveries.next_expiry()
            with trio.move_on_at(math.inf if deadline is None else deadline):
                await changed.wait()
            self._deliveries.expire_due(trio.current_time())
