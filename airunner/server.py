"""The server: a store, the actors it needs, and the HTTP front, in one nursery tree."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import trio

from airunner.actors import HttpFront, supervise
from airunner.config import ConfigError, MemoryStoreSettings, StoreSettings
from airunner.http import DEQUEUE_POLL_WINDOW_SECONDS, BearerAuth, Drain, build_app
from airunner.store import JobStore, MemoryJobStore

log = logging.getLogger(__name__)

# ECS stops a task with SIGTERM and kills it 30 s later; finish within that.
DEFAULT_GRACE_PERIOD_SECONDS = 25.0


@dataclass(frozen=True)
class ServerSettings:
    listen: str
    store: StoreSettings
    auth: BearerAuth | None
    grace_period: float = DEFAULT_GRACE_PERIOD_SECONDS
    poll_window: float = DEQUEUE_POLL_WINDOW_SECONDS


def build_store(settings: StoreSettings) -> JobStore:
    """The store the settings name.

    Raises:
        ConfigError: the store cannot be created.
    """
    if isinstance(settings, MemoryStoreSettings):
        store = MemoryJobStore(
            default_visibility_timeout=settings.default_visibility_timeout,
            token_secret=settings.token_signing_secret,
        )
        log.info("Using in-memory job store")
        return store
    raise ConfigError(
        "failed to create SQS store: the SQS/DynamoDB store is not available "
        "in this version of airunner; unset AIRUNNER_STORE_TYPE to use the in-memory store"
    )


class Server:
    """Runs the store's actors, then the HTTP front, until drained.

    Nurseries follow lifetimes: the store's actors outlive the HTTP front, so
    requests still in flight during the drain find them running.
    """

    def __init__(self, settings: ServerSettings, store: JobStore) -> None:
        self._settings = settings
        self._store = store
        self.drain = Drain()

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until ``drain.begin()`` and the grace period that follows.

        ``task_status.started`` reports the bound URLs.
        """
        app = build_app(
            self._store,
            auth=self._settings.auth,
            drain=self.drain,
            poll_window=self._settings.poll_window,
        )
        front = HttpFront(
            app,
            self._settings.listen,
            shutdown_trigger=self.drain.wait,
            grace_period=self._settings.grace_period,
        )
        async with trio.open_nursery() as store_actors:
            for actor in self._store.actors():
                await store_actors.start(supervise, actor)
            async with trio.open_nursery() as serving:
                binds = await serving.start(supervise, front)
                log.info(
                    "airunner serving on %s (auth %s)",
                    ", ".join(binds),
                    "on" if self._settings.auth else "off",
                )
                task_status.started(binds)
            log.info("HTTP front drained")
            store_actors.cancel_scope.cancel()
