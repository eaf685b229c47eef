"""What an actor is: one long-lived task with one job."""

from __future__ import annotations

from typing import Any, Protocol

import trio


class Actor(Protocol):
    """A long-lived task the server runs for as long as it serves."""

    @property
    def name(self) -> str: ...

    @property
    def restartable(self) -> bool:
        """Whether a crash restarts the actor (True) or stops the server (False)."""
        ...

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled or done; call ``task_status.started(...)`` once ready."""
        ...
