"""The server: a store, the actors it needs, and the HTTP front, in one nursery tree."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio
from botocore.exceptions import BotoCoreError, ClientError

from airunner.actors import HttpFront, supervise
from airunner.aws import open_aws_clients
from airunner.config import ConfigError, MemoryStoreSettings, StoreSettings
from airunner.http import DEQUEUE_POLL_WINDOW_SECONDS, BearerAuth, Drain, build_app
from airunner.store import JobStore, MemoryJobStore
from airunner.store.sqs import DEFAULT_EVENTS_TABLE, QueueUnusable, SQSJobStore

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


@asynccontextmanager
async def open_store(settings: StoreSettings) -> AsyncIterator[JobStore]:
    """The store the settings name, open for as long as the context lasts.

    Raises:
        ConfigError: the store cannot be used (for SQS: a queue or table is
            missing or unreachable), with one line for the operator.
    """
    if isinstance(settings, MemoryStoreSettings):
        log.info("Using in-memory job store")
        yield MemoryJobStore(
            queues=settings.queues,
            default_visibility_timeout=settings.default_visibility_timeout,
            token_secret=settings.token_signing_secret,
            max_attempts=settings.max_attempts,
            max_output_bytes=settings.max_output_bytes,
            max_finished_jobs=settings.max_finished_jobs,
            finished_job_ttl=settings.finished_job_ttl,
            max_finished_output_bytes=settings.max_finished_output_bytes,
        )
        return
    async with open_aws_clients() as aws:
        store = SQSJobStore(
            aws,
            queue_urls=settings.queue_urls,
            jobs_table=settings.jobs_table,
            events_table=settings.events_table or DEFAULT_EVENTS_TABLE,
            default_visibility_timeout=settings.default_visibility_timeout,
            token_secret=settings.token_signing_secret,
            events_ttl_days=settings.events_ttl_days,
            max_attempts=settings.max_attempts,
            max_output_bytes=settings.max_output_bytes,
        )
        try:
            await store.check_resources()
        except (BotoCoreError, ClientError, QueueUnusable) as e:
            raise ConfigError(f"failed to create SQS store: {e}") from None
        log.info("Using SQS/DynamoDB job store")
        yield store


class Server:
    """Runs the store's actors, then the HTTP front, until drained.

    Nurseries follow lifetimes: the store's actors outlive the HTTP front, so
    requests still in flight during the drain find them running.
    """

    def __init__(self, settings: ServerSettings, store: JobStore | None = None) -> None:
        self._settings = settings
        self._store = store
        self.drain = Drain()

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until ``drain.begin()`` and the grace period that follows.

        ``task_status.started`` reports the bound URLs.
        """
        if self._store is not None:
            await self._serve(self._store, task_status)
            return
        async with open_store(self._settings.store) as store:
            await self._serve(store, task_status)

    async def _serve(self, store: JobStore, task_status: trio.TaskStatus[Any]) -> None:
        app = build_app(
            store,
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
            for actor in store.actors():
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
