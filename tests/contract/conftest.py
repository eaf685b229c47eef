"""Fixtures of the store contract suite: every test runs against every store.

A second store plugs in by adding its name to STORES and a branch to ``store``.
Time-dependent tests take the ``clock`` fixture: a trio MockClock that jumps
ahead whenever every task is waiting, for stores whose deadlines are trio times.
Stores on real clocks (AWS) run the same tests in real time, with short
timeouts, and ``slack`` says how late their timers may fire.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from airunner.aws import open_aws_clients
from airunner.store import JobStore, MemoryJobStore
from airunner.store._sqs import SQSJobStore
from airunner.store._sqs_schema import create_resources

STORES = ["memory", "sqs"]
_names = itertools.count()
# Small, so that the overflow case needs few events.
SUBSCRIBER_BUFFER = 8
POLL = 5.0


@pytest.fixture(params=STORES)
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clock(store_kind: str) -> trio.abc.Clock | None:
    if store_kind == "memory":
        return trio.testing.MockClock(autojump_threshold=0)
    return None


@pytest.fixture
def slack(store_kind: str) -> float:
    """Seconds a store's visibility expiry may come late (0 on the mock clock)."""
    return 0.0 if store_kind == "memory" else 1.0


@pytest.fixture
async def store(
    store_kind: str, nursery: trio.Nursery, request: pytest.FixtureRequest
) -> AsyncIterator[JobStore]:
    if store_kind == "memory":
        made: JobStore = MemoryJobStore(
            token_secret=b"contract-secret", subscriber_buffer=SUBSCRIBER_BUFFER
        )
        for actor in made.actors():
            await nursery.start(actor.run)
        yield made
        return
    # Fresh queues and tables on moto's server for every test.
    request.getfixturevalue("aws_env")
    name = f"c{next(_names)}-{uuid.uuid4().hex[:8]}"
    async with open_aws_clients() as aws:
        resources = await create_resources(
            aws, environment=name, jobs_table=f"jobs-{name}", events_table=f"events-{name}"
        )
        made = SQSJobStore(
            aws,
            queue_urls=resources.queue_urls,
            jobs_table=resources.jobs_table,
            events_table=resources.events_table,
            default_visibility_timeout=300,
            token_secret=b"contract-secret",
        )
        async with trio.open_nursery() as actors:
            for actor in made.actors():
                await actors.start(actor.run)
            yield made
            actors.cancel_scope.cancel()
