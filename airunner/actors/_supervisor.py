"""Running actors: start each once it is ready, restart or stop on a crash."""

from __future__ import annotations

import logging
from typing import Any

import trio

from ._actor import Actor

log = logging.getLogger(__name__)

# First pause before restarting a crashed actor; it doubles on each crash in a
# row up to the maximum, so a persistent fault does not spin the CPU.
RESTART_BACKOFF_INITIAL = 0.5
RESTART_BACKOFF_MAX = 30.0
# An actor that ran this long since its last restart is healthy again.
RESTART_BACKOFF_RESET_AFTER = 60.0


class _ReadyWatch(trio.TaskStatus[Any]):
    """Passes on the actor's ``started`` call and remembers that it came."""

    def __init__(self, outer: trio.TaskStatus[Any]) -> None:
        self._outer = outer
        self.ready = False

    def started(self, value: Any = None) -> None:
        self.ready = True
        self._outer.started(value)


async def supervise(
    actor: Actor, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run ``actor``, passing on what it reports once started.

    A crash before the actor is ready propagates, so the server fails to start.
    A later crash is logged with the actor's name and traceback; a restartable
    actor then restarts after a backoff, any other re-raises and so stops the server.

    Cancellation:
        Cancelling stops the actor.
    """
    watch = _ReadyWatch(task_status)
    backoff = RESTART_BACKOFF_INITIAL
    while True:
        began = trio.current_time()
        try:
            if watch.ready:
                await actor.run()
            else:
                await actor.run(task_status=watch)
            log.info("%s stopped", actor.name)
            return
        except Exception:
            if not watch.ready:
                raise
            log.exception("%s crashed", actor.name)
            if not actor.restartable:
                raise
        if trio.current_time() - began > RESTART_BACKOFF_RESET_AFTER:
            backoff = RESTART_BACKOFF_INITIAL
        log.info("restarting %s in %.1f s", actor.name, backoff)
        await trio.sleep(backoff)
        backoff = min(backoff * 2, RESTART_BACKOFF_MAX)
