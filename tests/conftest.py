"""Fixtures for the whole suite: moto's server on 127.0.0.1, started by the suite itself."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import boto3
import pytest
import trio
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from airunner.aws import AwsClients, open_aws_clients
from airunner.store.sqs import QUEUE_NAMES, Resources, SQSJobStore, create_resources
from tests.helpers import ROOT, clean_env

_names = itertools.count()


@asynccontextmanager
async def open_sqs_store(
    *,
    token_secret: bytes = b"contract-secret",
    queues: Sequence[str] = QUEUE_NAMES,
    **options: Any,
) -> AsyncIterator[tuple[SQSJobStore, AwsClients, Resources]]:
    """An SQS/DynamoDB store on fresh queues and tables, its actors running.

    Needs the ``aws_env`` fixture (moto's server).
    """
    name = f"t{next(_names)}-{uuid.uuid4().hex[:8]}"
    async with open_aws_clients() as aws:
        resources = await create_resources(
            aws,
            environment=name,
            jobs_table=f"jobs-{name}",
            events_table=f"events-{name}",
            queues=queues,
        )
        async with running_sqs_store(
            aws, resources, token_secret=token_secret, **options
        ) as store:
            yield store, aws, resources


@asynccontextmanager
async def running_sqs_store(
    aws: AwsClients, resources: Resources, *, token_secret: bytes, **options: Any
) -> AsyncIterator[SQSJobStore]:
    """A store on existing queues and tables (another replica, say), its actors running."""
    store = SQSJobStore(
        aws,
        queue_urls=resources.queue_urls,
        jobs_table=resources.jobs_table,
        events_table=resources.events_table,
        default_visibility_timeout=300,
        token_secret=token_secret,
        **options,
    )
    await store.check_resources()
    async with trio.open_nursery() as actors:
        for actor in store.actors():
            await actors.start(actor.run)
        yield store
        actors.cancel_scope.cancel()


class Metrics:
    """What airunner's instruments recorded in this process, read on demand."""

    def __init__(self) -> None:
        self._reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[self._reader]))

    def totals(self, name: str) -> dict[frozenset[tuple[str, object]], float]:
        """The metric's current values (cumulative since the session began), by attributes."""
        data = self._reader.get_metrics_data()
        totals: dict[frozenset[tuple[str, object]], float] = {}
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        for point in metric.data.data_points:
                            attributes = frozenset((point.attributes or {}).items())
                            totals[attributes] = getattr(point, "value", 0)
        return totals

    def total(self, name: str, **attributes: object) -> float:
        """The sum over every point whose attributes include these."""
        wanted = set(attributes.items())
        return sum(v for k, v in self.totals(name).items() if wanted <= k)


@pytest.fixture(scope="session")
def recorded() -> Metrics:
    """An OpenTelemetry SDK behind airunner's instruments (installed once per session)."""
    return Metrics()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    port = _free_port()
    # moto's own server, but with DynamoDB requests one at a time, as atomic as
    # DynamoDB is (tests/moto_serial.py says why).
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.moto_serial", "127.0.0.1", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=clean_env(),
        cwd=ROOT,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto's server did not start") from None
                time.sleep(0.1)
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=10)


# The fixtures that start or reach moto's server. A test that uses one must be
# marked ``aws``, so that ``-m "not aws"`` never waits for moto.
_MOTO_FIXTURES = frozenset({"moto_endpoint", "aws_env"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    unmarked = [
        item.nodeid
        for item in items
        if _MOTO_FIXTURES & set(getattr(item, "fixturenames", ()))
        and item.get_closest_marker("aws") is None
    ]
    if unmarked:
        raise pytest.UsageError(
            "these tests use moto's server but are not marked aws:\n  " + "\n  ".join(unmarked)
        )


@pytest.fixture
def aws_env(
    moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> dict[str, str]:
    """AWS settings pointing at moto, in this process and for commands it runs."""
    # The check at collection sees only fixtures a test names, not those it
    # asks for with request.getfixturevalue (as the contract suite's store does).
    if request.node.get_closest_marker("aws") is None:
        pytest.fail(f"{request.node.nodeid} uses moto's server but is not marked aws")
    env = {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def boto(aws_env: dict[str, str]) -> tuple[object, object]:
    """Plain boto3 clients, for checking what the code under test made."""
    kwargs = {"region_name": "us-east-1", "endpoint_url": os.environ["AWS_ENDPOINT_URL"]}
    return boto3.client("sqs", **kwargs), boto3.client("dynamodb", **kwargs)
