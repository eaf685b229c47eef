"""How many AWS calls the SQS/DynamoDB store makes, on moto's server started here.

Run by hand (not in CI), from the virtualenv that ``./scripts/setup`` made:

    .venv/bin/python bench/aws_calls.py [--idle-seconds 40]

Prints three measurements, each with a baseline measured in the same run:

1. AWS API calls per job lifecycle by operation: enqueue, dequeue and
   complete alone (target: at most 6), with the job waiting in its queue and
   with a worker already waiting for it; and with the message that takes the
   job up, three publishes and one heartbeat.
2. Events per BatchWriteItem call when 20 jobs publish at once, against the
   same publishes made one job at a time.
3. ReceiveMessage calls per minute while 50 workers wait on an empty queue,
   against 50 workers long-polling SQS each for itself.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import trio
from protobuf import Oneof

from airunner.api.job.v1.job_pb import (
    EventType,
    JobEvent,
    JobParams,
    JobResult,
    OutputBatchEvent,
    OutputItem,
    ProcessEndEvent,
    ProcessStartEvent,
    StreamType,
)
from airunner.aws import AwsClients, open_aws_clients
from airunner.store.sqs import Resources, SQSJobStore, create_resources

SECRET = b"bench-secret"


@contextmanager
def moto_server() -> Iterator[str]:
    """moto's server on a free 127.0.0.1 port, and the AWS env pointing at it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    moto = Path(sys.executable).parent / "moto_server"
    process = subprocess.Popen(
        [str(moto), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
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
                    raise SystemExit("moto's server did not start") from None
                time.sleep(0.1)
        os.environ.update(
            AWS_ENDPOINT_URL=endpoint,
            AWS_REGION="us-east-1",
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench",
            AWS_EC2_METADATA_DISABLED="true",
        )
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=10)


class CallCounter:
    """Counts AWS calls by operation (once per call, whatever its retries)."""

    def __init__(self, aws: AwsClients) -> None:
        self.calls: Counter[str] = Counter()
        self.items_per_write: list[int] = []
        for client in (aws.sqs, aws.dynamodb):
            client.meta.events.register("provide-client-params", self._count)

    def _count(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        self.calls[model.name] += 1
        if model.name == "BatchWriteItem":
            self.items_per_write.append(sum(len(v) for v in params["RequestItems"].values()))

    def reset(self) -> None:
        self.calls.clear()
        self.items_per_write.clear()


@asynccontextmanager
async def open_store() -> AsyncIterator[tuple[SQSJobStore, AwsClients, CallCounter, Resources]]:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    async with open_aws_clients() as aws:
        resources = await create_resources(
            aws, environment=name, jobs_table=f"jobs-{name}", events_table=f"events-{name}"
        )
        store = SQSJobStore(
            aws,
            queue_urls=resources.queue_urls,
            jobs_table=resources.jobs_table,
            events_table=resources.events_table,
            default_visibility_timeout=300,
            token_secret=SECRET,
        )
        await store.check_resources()
        counter = CallCounter(aws)
        async with trio.open_nursery() as actors:
            for actor in store.actors():
                await actors.start(actor.run)
            yield store, aws, counter, resources
            actors.cancel_scope.cancel()


def start(sequence: int) -> JobEvent:
    return JobEvent(
        sequence=sequence,
        event_type=EventType.PROCESS_START,
        event_data=Oneof(field="process_start", value=ProcessStartEvent(pid=1)),
    )


def output(sequence: int) -> JobEvent:
    batch = OutputBatchEvent(
        outputs=[OutputItem(output=b"a line of output\n", stream_type=StreamType.STDOUT)],
        start_sequence=sequence,
        end_sequence=sequence,
    )
    return JobEvent(
        sequence=sequence,
        event_type=EventType.OUTPUT_BATCH,
        event_data=Oneof(field="output_batch", value=batch),
    )


def end(sequence: int) -> JobEvent:
    return JobEvent(
        sequence=sequence,
        event_type=EventType.PROCESS_END,
        event_data=Oneof(field="process_end", value=ProcessEndEvent(pid=1, exit_code=0)),
    )


async def job_lifecycle(store: SQSJobStore, *, outputs: int = 1) -> None:
    """What a worker does for one job, as the store sees it."""
    job = await store.enqueue_job(uuid.uuid4().hex, "default", JobParams(command="true"))
    delivery = await store.dequeue_job("default", 300, deadline=trio.current_time() + 30)
    assert delivery is not None
    # The worker's event stream opens with its token alone: that takes the job up.
    await store.publish_events(delivery.task_token, [])
    await store.publish_events(delivery.task_token, [start(1)])
    for sequence in range(2, 2 + outputs):
        await store.publish_events(delivery.task_token, [output(sequence)])
    await store.update_job("default", delivery.task_token, 300)
    await store.publish_events(delivery.task_token, [end(2 + outputs)])
    await store.complete_job(
        delivery.task_token, JobResult(job_id=job.job_id, success=True, exit_code=0)
    )


async def bare_lifecycle(store: SQSJobStore, *, worker_waiting: bool) -> None:
    """Enqueue, dequeue, complete: no events, no heartbeat. With
    ``worker_waiting`` the dequeue is already waiting when the job is enqueued."""
    delivery = None

    async def dequeue() -> None:
        nonlocal delivery
        delivery = await store.dequeue_job(["default"], 300, deadline=trio.current_time() + 30)

    async with trio.open_nursery() as nursery:
        if worker_waiting:
            nursery.start_soon(dequeue)
            await trio.sleep(0.05)
        job = await store.enqueue_job(uuid.uuid4().hex, "default", JobParams(command="true"))
        if not worker_waiting:
            nursery.start_soon(dequeue)
    assert delivery is not None
    await store.complete_job(
        delivery.task_token, JobResult(job_id=job.job_id, success=True, exit_code=0)
    )


def print_calls(counter: CallCounter, jobs: int) -> float:
    for operation, count in sorted(counter.calls.items()):
        print(f"   {operation:<34} {count / jobs:5.1f}")
    total = sum(counter.calls.values()) / jobs
    print(f"   {'total':<34} {total:5.1f}")
    return total


async def calls_per_job() -> None:
    jobs = 10
    async with open_store() as (store, _, counter, _):
        await job_lifecycle(store)  # connections warm, tables known
        for waiting in (False, True):
            counter.reset()
            for _ in range(jobs):
                await bare_lifecycle(store, worker_waiting=waiting)
            when = "a worker already waiting" if waiting else "the job waiting in its queue"
            print(f"1. AWS calls per job lifecycle (enqueue, dequeue, complete; {when})")
            total = print_calls(counter, jobs)
            print(
                "   baseline 5 (TransactWriteItems+SendMessage, ReceiveMessage, UpdateItem,"
                " UpdateItem+DeleteMessage; 6 with the ReceiveMessage unshared);"
                f" target <= 6: {'met' if total <= 6 else 'not met'}"
            )
        counter.reset()
        for _ in range(jobs):
            await job_lifecycle(store)
        print(f"1. AWS calls per job lifecycle (mean of {jobs} jobs, 3 publishes, 1 heartbeat)")
        print_calls(counter, jobs)


async def publish_many(store: SQSJobStore, jobs: int, publishes: int, *, together: bool) -> None:
    deliveries = []
    for _ in range(jobs):
        await store.enqueue_job(uuid.uuid4().hex, "default", JobParams(command="true"))
        delivery = await store.dequeue_job("default", 300, deadline=trio.current_time() + 30)
        assert delivery is not None
        deliveries.append(delivery)

    async def publisher(token: str) -> None:
        for sequence in range(1, publishes + 1):
            await store.publish_events(token, [output(sequence)])

    if together:
        async with trio.open_nursery() as nursery:
            for delivery in deliveries:
                nursery.start_soon(publisher, delivery.task_token)
    else:
        for delivery in deliveries:
            await publisher(delivery.task_token)


async def events_per_batch() -> None:
    jobs, publishes = 20, 25
    results = {}
    for together in (False, True):
        async with open_store() as (store, _, counter, _):
            await job_lifecycle(store)
            counter.reset()
            began = time.perf_counter()
            await publish_many(store, jobs, publishes, together=together)
            seconds = time.perf_counter() - began
            writes = counter.items_per_write
            results[together] = (sum(writes) / len(writes), len(writes), seconds)
    (alone, alone_calls, _), (many, many_calls, _) = results[False], results[True]
    print(f"2. Events per BatchWriteItem, {jobs} jobs x {publishes} publishes of one event")
    for label, (per_call, calls, spent) in (
        ("one job at a time (baseline)", results[False]),
        (f"{jobs} jobs at once", results[True]),
    ):
        print(f"   {label:<29} {per_call:5.2f} per call, {calls} calls, {spent:.1f} s")
    fewer = alone_calls / many_calls
    print(f"   ratio: {many / alone:.1f}x events per call, {fewer:.1f}x fewer calls")


async def idle_receives(seconds: float) -> None:
    workers = 50
    async with open_store() as (store, aws, counter, resources):
        url = resources.queue_urls["default"]  # the same queue for the baseline
        counter.reset()

        async def idle_worker() -> None:
            await store.dequeue_job("default", 300, deadline=trio.current_time() + seconds)

        with trio.move_on_after(seconds):
            async with trio.open_nursery() as nursery:
                for _ in range(workers):
                    nursery.start_soon(idle_worker)
        ours = counter.calls["ReceiveMessage"]
        counter.reset()

        # The baseline's workers each have a connection of their own, as separate
        # processes would.
        async def naive_worker() -> None:
            while True:
                await aws.sqs.receive_message(
                    QueueUrl=url, WaitTimeSeconds=20, MaxNumberOfMessages=1
                )

        with trio.move_on_after(seconds):
            async with trio.open_nursery() as nursery:
                for _ in range(workers):
                    nursery.start_soon(naive_worker)
        naive = counter.calls["ReceiveMessage"]
    per_minute = 60 / seconds
    print(f"3. ReceiveMessage calls per minute, {workers} idle workers, {seconds:.0f} s each")
    print(f"   each worker polls SQS (baseline): {naive * per_minute:6.1f}")
    print(f"   one queue poller per queue:       {ours * per_minute:6.1f}")
    print(f"   ratio: {naive / max(ours, 1):.0f}x fewer calls")


async def main(idle_seconds: float) -> None:
    await calls_per_job()
    await events_per_batch()
    await idle_receives(idle_seconds)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle-seconds", type=float, default=40.0)
    args = parser.parse_args()
    with moto_server():
        trio.run(main, args.idle_seconds)
