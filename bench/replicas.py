"""Live output across replicas of the SQS store: how late a line reaches a
subscriber on another replica, against one on the replica the worker publishes
to, and what the other replica's looks cost in AWS calls.

Run by hand (not in CI), from the virtualenv that ``./scripts/setup`` made:

    .venv/bin/python -m bench.replicas [--lines 200] [--sparse-lines 50]

Two stores on one moto server started here, as two replicas behind a load
balancer would be (in one process: the figures are the store's, without the
HTTP front). A job runs on replica A; one subscriber follows it on A and one on
B. The publisher sends one line every 50 ms (dense), then one every 700 ms
(sparse: the event tail has backed off). Latency is publish called → event
received. Target: p99 ≤ 300 ms on the other replica.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from airunner.api.job.v1.job_pb import (
    JobParams,
    JobResult,
)
from airunner.aws import open_aws_clients
from airunner.store import EventQuery
from airunner.store.sqs import SQSJobStore, create_resources
from bench.aws_calls import CallCounter, moto_server, output

SECRET = b"bench-secret"
TARGET_MS = 300.0


@asynccontextmanager
async def replicas() -> AsyncIterator[tuple[SQSJobStore, SQSJobStore, CallCounter]]:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    async with open_aws_clients() as aws_a, open_aws_clients() as aws_b:
        resources = await create_resources(
            aws_a, environment=name, jobs_table=f"jobs-{name}", events_table=f"events-{name}"
        )
        stores = [
            SQSJobStore(
                aws,
                queue_urls=resources.queue_urls,
                jobs_table=resources.jobs_table,
                events_table=resources.events_table,
                default_visibility_timeout=300,
                token_secret=SECRET,
            )
            for aws in (aws_a, aws_b)
        ]
        async with trio.open_nursery() as actors:
            for store in stores:
                await store.check_resources()
                for actor in store.actors():
                    await actors.start(actor.run)
            yield stores[0], stores[1], CallCounter(aws_b)
            actors.cancel_scope.cancel()


def summary(latencies: list[float]) -> str:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    median = statistics.median(ordered)
    return f"p50 {median:6.1f} ms, p99 {p99:6.1f} ms, max {ordered[-1]:6.1f} ms"


async def main(lines: int, sparse: int) -> None:
    async with replicas() as (a, b, b_calls):
        job = await a.enqueue_job(uuid.uuid4().hex, "default", JobParams(command="true"))
        delivery = await a.dequeue_job(["default"], 300, deadline=trio.current_time() + 30)
        assert delivery is not None
        token = delivery.task_token
        await a.publish_events(token, [])
        sent: dict[int, float] = {}
        received: dict[str, dict[int, float]] = {"A": {}, "B": {}}
        phases = [
            ("dense, a line every 50 ms", lines, 0.05),
            ("sparse, every 700 ms", sparse, 0.7),
        ]
        total = sum(count for _, count, _ in phases)

        async def follow(name: str, store: SQSJobStore, ready: trio.Event) -> None:
            async with store.subscribe_events(job.job_id, EventQuery()) as stream:
                ready.set()
                while (event := await stream.receive()) is not None:
                    received[name][event.sequence] = time.perf_counter()
                    if event.sequence == total:
                        return

        async with trio.open_nursery() as nursery:
            for name, store in (("A", a), ("B", b)):
                ready = trio.Event()
                nursery.start_soon(follow, name, store, ready)
                await ready.wait()
            await trio.sleep(1)
            b_calls.reset()
            began = time.perf_counter()
            sequence = 0
            for _, count, pause in phases:
                for _ in range(count):
                    sequence += 1
                    sent[sequence] = time.perf_counter()
                    await a.publish_events(token, [output(sequence)])
                    await trio.sleep(pause)
            minutes = (time.perf_counter() - began) / 60
        await a.complete_job(token, JobResult(job_id=job.job_id, success=True, exit_code=0))
    print("Live output across two replicas (SQS store on moto), publish → received")
    start = 1
    for label, count, _ in phases:
        numbers = range(start, start + count)
        start += count
        print(f"  {label} ({count} lines)")
        for name, where in (("A", "the worker's replica (baseline)"), ("B", "another replica")):
            latencies = [(received[name][n] - sent[n]) * 1000 for n in numbers]
            print(f"    {where:<34} {summary(latencies)}")
        other = sorted((received["B"][n] - sent[n]) * 1000 for n in numbers)
        p99 = other[min(len(other) - 1, int(len(other) * 0.99))]
        verdict = "met" if p99 <= TARGET_MS else "not met"
        print("    slowest on another replica:", ", ".join(f"{ms:.0f}" for ms in other[-5:]))
        print(f"    target: p99 <= {TARGET_MS:.0f} ms on another replica: {verdict}")
    calls = {name: count / minutes for name, count in sorted(b_calls.calls.items())}
    print("  AWS calls of the other replica per followed job-minute (one job, one subscriber):")
    for operation, per_minute in calls.items():
        print(f"    {operation:<20} {per_minute:7.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=200, help="dense lines")
    parser.add_argument("--sparse-lines", type=int, default=50)
    args = parser.parse_args()
    with moto_server():
        trio.run(main, args.lines, args.sparse_lines)
