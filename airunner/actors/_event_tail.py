"""EventTail: brings news of jobs that other replicas run to this replica's subscribers."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import trio
from botocore.exceptions import BotoCoreError, ClientError

from airunner.wakeup import KeyedWakeup, Wakeup

log = logging.getLogger(__name__)

# How often the store is asked for news of the jobs somebody here watches.
INTERVAL_SECONDS = 1.0


class EventTail:
    """Watches the jobs this replica's subscribers follow, and wakes them on news.

    Events and completions stored by this replica wake its subscribers at once
    (the store does that); those stored by another replica reach no one here
    but through this actor. While somebody watches, every interval it asks
    ``look(job_ids)`` for a summary of each watched job (the store reads the
    newest stored sequence and whether the job is final) and wakes the job's
    key in ``changes`` when the summary differs from the last look (or on the
    first look at the job, which costs a subscriber one needless read at most).
    A subscriber then reads the events itself, from where it left off. With
    nobody watching it reads nothing.

    It wakes subscribers through a ``KeyedWakeup`` rather than a channel: any
    number of subscribers (or none) wait on one job, each must look again, and
    waking never blocks the tail.

    Args:
        look: The news of some jobs, by job id. AWS errors it raises are logged
            and the next look tries again.
        changes: Woken, per job id, when there is news.
        interval: Seconds between looks.
    """

    name = "event tail"
    restartable = True

    def __init__(
        self,
        look: Callable[[Sequence[str]], Awaitable[Mapping[str, Hashable]]],
        changes: KeyedWakeup[str],
        *,
        interval: float = INTERVAL_SECONDS,
    ) -> None:
        self._look = look
        self._changes = changes
        self._interval = interval
        self._watchers: dict[str, int] = {}
        self._seen: dict[str, Hashable] = {}
        self._watched = Wakeup()

    @contextmanager
    def watching(self, job_id: str) -> Iterator[None]:
        """Look at ``job_id`` for as long as the context lasts."""
        self._watchers[job_id] = self._watchers.get(job_id, 0) + 1
        self._watched.wake()
        try:
            yield
        finally:
            self._watchers[job_id] -= 1
            if not self._watchers[job_id]:
                del self._watchers[job_id]
                self._seen.pop(job_id, None)

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            while not self._watchers:
                await self._watched.wait()
            try:
                news = await self._look(list(self._watchers))
            except (ClientError, BotoCoreError) as e:
                # The next look tries again; subscribers keep what they have.
                log.warning("%s could not read the tables: %s", self.name, e)
            else:
                self._wake_changed(news)
            await trio.sleep(self._interval)

    def _wake_changed(self, news: Mapping[str, Hashable]) -> None:
        for job_id, summary in news.items():
            # A job nobody watches any more is forgotten, not woken.
            if job_id in self._watchers and self._seen.get(job_id, _UNSEEN) != summary:
                self._seen[job_id] = summary
                self._changes.wake(job_id)


_UNSEEN = object()
