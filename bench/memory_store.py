"""How much memory the in-memory store holds when jobs keep finishing with output.

Run by hand (not in CI), from the virtualenv that ``./scripts/setup`` made:

    .venv/bin/python bench/memory_store.py [--jobs 10000]

Each workload runs in a fresh process, once with the store's default bounds and
once unbounded (as the store was before it had any), and prints the resident
memory it added to a baseline measured in the same process just before: the
store created, nothing in it. Workloads:

1. ``--jobs`` finished jobs of 100 KB of output each, in 4 KiB items.
2. 1,000 finished jobs of 256 KiB each, in 4 KiB items (about the default
   output total, counted with each item's overhead); then in 256-byte items,
   and 300 such jobs in 16-byte items (more objects per byte: the worst case
   for the memory a counted byte costs).
3. One job printing 1 GiB, in 4 KiB items.

Output is published through the store's API in batches of up to 256 KiB and
1,000 items, as a worker sends it; every item's bytes are a fresh object, as they would be off the
wire.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import subprocess
import sys
from pathlib import Path

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
from airunner.store import MemoryJobStore

KIB = 1024
MIB = 1024 * KIB
# What a worker sends at most in one output batch (the default BatchingConfig).
BATCH_BYTES = 256 * KIB
BATCH_ITEMS = 1000


def rss_mib() -> tuple[float, float]:
    """This process's resident memory now and at its peak, in MiB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        fields[name] = value.split()
    return int(fields["VmRSS"][0]) / KIB, int(fields["VmHWM"][0]) / KIB


def make_store(bounded: bool) -> MemoryJobStore:
    if bounded:
        return MemoryJobStore()
    return MemoryJobStore(
        max_output_bytes=2**62,
        max_finished_jobs=2**62,
        finished_job_ttl=math.inf,
        max_finished_output_bytes=2**62,
    )


def batch(sequence: int, items: int, item_bytes: int) -> JobEvent:
    outputs = [
        OutputItem(output=b"x" * item_bytes, stream_type=StreamType.STDOUT) for _ in range(items)
    ]
    return JobEvent(
        sequence=sequence,
        event_type=EventType.OUTPUT_BATCH,
        event_data=Oneof(
            field="output_batch",
            value=OutputBatchEvent(
                outputs=outputs, start_sequence=sequence, end_sequence=sequence + items - 1
            ),
        ),
    )


async def run_job(store: MemoryJobStore, number: int, output: int, item_bytes: int) -> None:
    """One job as a worker runs it: start, ``output`` bytes, end, complete."""
    job = await store.enqueue_job(f"job-{number}", "default", JobParams(command="yes"))
    delivery = await store.dequeue_job("default", 300, deadline=trio.current_time() + 5)
    assert delivery is not None
    token = delivery.task_token
    start = JobEvent(
        sequence=1,
        event_type=EventType.PROCESS_START,
        event_data=Oneof(field="process_start", value=ProcessStartEvent(pid=1)),
    )
    await store.publish_events(token, [start])
    sequence = 2
    per_batch = min(BATCH_BYTES // item_bytes, BATCH_ITEMS)
    left = output // item_bytes
    while left:
        items = min(per_batch, left)
        await store.publish_events(token, [batch(sequence, items, item_bytes)])
        sequence += items
        left -= items
    end = JobEvent(
        sequence=sequence,
        event_type=EventType.PROCESS_END,
        event_data=Oneof(field="process_end", value=ProcessEndEvent(pid=1, exit_code=0)),
    )
    await store.publish_events(token, [end])
    await store.complete_job(token, JobResult(job_id=job.job_id, success=True))


async def workload(bounded: bool, jobs: int, output: int, item_bytes: int) -> dict[str, float]:
    store = make_store(bounded)
    gc.collect()
    baseline, _ = rss_mib()
    for number in range(jobs):
        await run_job(store, number, output, item_bytes)
    gc.collect()
    now, peak = rss_mib()
    page = await store.list_jobs("", 0, 1, 1)  # type: ignore[arg-type]
    kept = page.last_page
    return {"baseline": baseline, "added": now - baseline, "peak": peak - baseline, "kept": kept}


def measure(bounded: bool, jobs: int, output: int, item_bytes: int) -> dict[str, float]:
    """Run one workload in a fresh process; return what it measured."""
    done = subprocess.run(
        [sys.executable, __file__, "--one", json.dumps([bounded, jobs, output, item_bytes])],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(done.stdout))


def report(title: str, jobs: int, output: int, item_bytes: int) -> None:
    bounded = measure(True, jobs, output, item_bytes)
    unbounded = measure(False, jobs, output, item_bytes)
    print(title)
    for label, got in (("unbounded (baseline)", unbounded), ("default bounds", bounded)):
        print(
            f"   {label:<21} {got['kept']:>6.0f} jobs kept, +{got['added']:7.1f} MiB resident "
            f"(peak +{got['peak']:7.1f}) over {got['baseline']:.1f} MiB"
        )
    print(f"   ratio: {unbounded['added'] / max(bounded['added'], 1):.1f}x less memory held")


def main(jobs: int) -> None:
    report(f"1. {jobs} jobs of 100 KB in 4 KiB items", jobs, 100_000 // 4096 * 4096, 4 * KIB)
    report("2a. 1000 jobs of 256 KiB in 4 KiB items", 1000, 256 * KIB, 4 * KIB)
    report("2b. 1000 jobs of 256 KiB in 256-byte items", 1000, 256 * KIB, 256)
    report("2c. 300 jobs of 256 KiB in 16-byte items", 300, 256 * KIB, 16)
    report("3. one job printing 1 GiB in 4 KiB items", 1, 1024 * MIB, 4 * KIB)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        bounded, jobs, output, item_bytes = json.loads(args.one)
        print(json.dumps(trio.run(workload, bounded, jobs, output, item_bytes)))
    else:
        main(args.jobs)
