"""Fixtures of the store contract suite: every test runs against every store.

A second store plugs in by adding its name to STORES (marked ``aws`` if it needs
moto's server) and a branch to ``store``.
Time-dependent tests take the ``clock`` fixture: a trio MockClock that jumps
ahead whenever every task is waiting, for stores whose deadlines are trio times.
Stores on real clocks (AWS) run the same tests in real time, with short
timeouts, and ``slack`` says how late their timers may fire.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from airunner.store import JobStore, MemoryJobStore
from tests.conftest import open_sqs_store

STORES = ["memory", pytest.param("sqs", marks=pytest.mark.aws)]
# Small, so that the overflow case needs few events.
SUBSCRIBER_BUFFER = 8
# Short, so that the stores on real clocks show a delivery nobody took up
# coming back in a few seconds.
CONFIRM_SECONDS = 3
POLL = 5.0
# Output bytes a job may store: small, so that the cap takes a few events to
# reach, and far above what the other tests publish.
OUTPUT_LIMIT = 10_000


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
            token_secret=b"contract-secret",
            subscriber_buffer=SUBSCRIBER_BUFFER,
            confirm_seconds=CONFIRM_SECONDS,
            max_output_bytes=OUTPUT_LIMIT,
        )
        for actor in made.actors():
            await nursery.start(actor.run)
        yield made
        return
    # Fresh queues and tables on moto's server for every test.
    request.getfixturevalue("aws_env")
    async with open_sqs_store(confirm_seconds=CONFIRM_SECONDS, max_output_bytes=OUTPUT_LIMIT) as (
        sqs_store,
        _,
        _,
    ):
        yield sqs_store
