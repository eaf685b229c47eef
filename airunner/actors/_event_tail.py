"""EventTail: brings news of jobs that other replicas run to this replica's subscribers."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import trio
from botocore.exceptions import BotoCoreError, ClientError

from airunner.wakeup import Wakeup

log = logging.getLogger(__name__)

# How soon a watched job is looked at again after news of it.
FAST_SECONDS = 0.1
# The longest pause between looks at a job that is running: each quiet look
# doubles the pause up to this. Live output from another replica arrives this
# late at most, plus a read.
RUNNING_SECONDS = 0.2
# The pause between looks at a job that is not running (waiting, or over).
INTERVAL_SECONDS = 1.0


@dataclass(frozen=True)
class TailPace:
    """Seconds between looks at a watched job: ``fast`` after news of it; after a
    look without news, twice the last pause, up to ``running`` while the job
    runs; ``idle`` while it does not."""

    fast: float = FAST_SECONDS
    running: float = RUNNING_SECONDS
    idle: float = INTERVAL_SECONDS


DEFAULT_PACE = TailPace()


class EventTail:
    """Watches the jobs this replica's subscribers follow, and tells of news.

    Events and completions stored by this replica reach its subscribers at
    once (the store does that); those stored by another replica reach no one
    here but through this actor. While somebody watches a job, it asks
    ``look(job_ids)`` for a summary of each job due for a look (the store reads
    the newest stored sequence and the job's state) and calls
    ``notify(job_id, summary)`` when the summary differs from the last look's
    (or on the first look at the job). With nobody watching it reads nothing.

    Each job is looked at on its own pace (``TailPace``), so that live output
    arrives soon and a quiet job costs little. Jobs due together share one look.

    Args:
        look: Per job id, its summary and whether it is running. AWS errors it
            raises are logged, and the jobs are looked at again after ``pace.idle``.
        notify: Called with a job id and its new summary.
        pace: Seconds between looks at a job.
    """

    name = "event tail"
    restartable = True

    def __init__(
        self,
        look: Callable[[Sequence[str]], Awaitable[Mapping[str, tuple[Hashable, bool]]]],
        notify: Callable[[str, Hashable], None],
        *,
        pace: TailPace = DEFAULT_PACE,
    ) -> None:
        self._look = look
        self._notify = notify
        self._fast = pace.fast
        self._running = max(pace.running, pace.fast)
        self._interval = pace.idle
        self._watchers: dict[str, int] = {}
        self._seen: dict[str, Hashable] = {}
        # When each watched job is looked at next (trio time), and the pause before that.
        self._due: dict[str, float] = {}
        self._pause: dict[str, float] = {}
        self._watched = Wakeup()

    @contextmanager
    def watching(self, job_id: str) -> Iterator[None]:
        """Look at ``job_id`` for as long as the context lasts (at once, the first time)."""
        self._watchers[job_id] = self._watchers.get(job_id, 0) + 1
        self._due.setdefault(job_id, trio.current_time())
        self._watched.wake()
        try:
            yield
        finally:
            self._watchers[job_id] -= 1
            if not self._watchers[job_id]:
                del self._watchers[job_id]
                for kept in (self._seen, self._due, self._pause):
                    kept.pop(job_id, None)

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            while not self._watchers:
                await self._watched.wait()
            now = trio.current_time()
            due = [job_id for job_id in self._watchers if self._due[job_id] <= now]
            if due:
                try:
                    news = await self._look(due)
                except (ClientError, BotoCoreError) as e:
                    # Subscribers keep what they have; these jobs are looked at again later.
                    log.warning("%s could not read the tables: %s", self.name, e)
                    news = {}
                self._pace(due, news, trio.current_time())
            if self._due:
                # A job watched meanwhile is due at once: its watcher wakes us.
                with trio.move_on_at(min(self._due.values())):
                    await self._watched.wait()

    def _pace(
        self, looked: Sequence[str], news: Mapping[str, tuple[Hashable, bool]], now: float
    ) -> None:
        for job_id in looked:
            if job_id not in self._watchers:
                # Nobody watches it any more: forgotten, not told of.
                continue
            if job_id not in news:
                pause = self._interval
            else:
                summary, running = news[job_id]
                if self._seen.get(job_id, _UNSEEN) != summary:
                    self._seen[job_id] = summary
                    self._notify(job_id, summary)
                    pause = self._fast
                elif running:
                    pause = min(self._pause.get(job_id, self._fast) * 2, self._running)
                else:
                    pause = self._interval
            self._pause[job_id] = pause
            self._due[job_id] = now + pause


_UNSEEN = object()
