"""Output end to end: worker → server → subscriber, against a bare trio pipe reader.

Run by hand (not in CI), from the virtualenv that ``./scripts/setup`` made:

    .venv/bin/python -m bench.output [--megabytes 200] [--lines 100]

Starts a real server (``airunner-server``, memory store) and a real worker
(``airunner-cli worker``) on 127.0.0.1, each a process of its own; this process
submits the jobs and is the subscriber (``StreamJobEvents`` through
``AirunnerClient``, as ``airunner-cli monitor`` reads it).

1. Throughput: a job writes ``--megabytes`` MB of random text (base64, which
   gzip shrinks by a quarter), then as much repetitive text, to stdout in 64 KiB
   writes. The figure is output bytes over the time from submission to the
   stream's end, after a small job has warmed the worker up; each process's CPU
   seconds per 100 MB are printed under it. Baseline: this process runs the same producer under
   ``trio.run_process`` and reads its pipe to the end. Target: at least 25% of
   the baseline.
2. Line latency: a job writes one line every 50 ms (``--lines`` of them), each
   holding the time it was written; the subscriber takes the time it receives
   it. Baseline: the same lines read from a bare pipe. Target: p99 ≤ 25 ms.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing, contextmanager
from pathlib import Path

import httpx
import trio
from connectrpc.code import Code
from connectrpc.errors import ConnectError

from airunner.allocator import keep_buffers_in_heap
from airunner.api.job.v1.job_pb import (
    EnqueueJobRequest,
    EventType,
    JobParams,
    StreamJobEventsRequest,
)
from airunner.client import AirunnerClient
from airunner.store import last_sequence_of

MB = 1_000_000
BIN = Path(sys.executable).parent
THROUGHPUT_TARGET = 0.25
LATENCY_TARGET_MS = 25.0

PRODUCER = """
import base64, os, sys
mode, total = sys.argv[1], int(sys.argv[2])
if mode == "random":
    block = base64.encodebytes(os.urandom(3 << 20))
else:
    block = b"building target 14 of 200: ok\\n" * (1 << 17)
view, left, at = memoryview(block), total, 0
while left > 0:
    size = min(65536, left, len(block) - at)
    left -= os.write(1, view[at : at + size])
    at = (at + size) % len(block)
"""

LINES = """
import os, sys, time
for _ in range(int(sys.argv[1])):
    os.write(1, b"%d\\n" % time.time_ns())
    time.sleep(0.05)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server_and_worker(total_bytes: int) -> Iterator[tuple[str, dict[str, int]]]:
    """A server process and a worker process; yields the server's URL and their pids."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    work_dir = tempfile.mkdtemp(prefix="airunner-bench-")
    limit = str(4 * total_bytes + 64 * MB)
    env = os.environ | {
        "AIRUNNER_LISTEN": f"127.0.0.1:{port}",
        "AIRUNNER_MAX_OUTPUT_BYTES": limit,
        "AIRUNNER_MEMORY_MAX_FINISHED_OUTPUT_BYTES": limit,
        "AIRUNNER_LOG_FORMAT": "json",
    }
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    server = subprocess.Popen(  # type: ignore[call-overload]
        [BIN / "airunner-server", "rpc-server", "--no-auth"], env=env, **quiet
    )
    worker = None
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/health", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the server did not start") from None
                time.sleep(0.1)
        worker = subprocess.Popen(  # type: ignore[call-overload]
            [BIN / "airunner-cli", "worker", "--server", url, "--work-dir", work_dir],
            env=env,
            **quiet,
        )
        yield url, {"server": server.pid, "worker": worker.pid}
    finally:
        for process in (worker, server):
            if process is not None:
                process.terminate()
                process.wait(30)
        shutil.rmtree(work_dir, ignore_errors=True)


async def job_output(
    client: AirunnerClient, script: str, *args: str
) -> AsyncIterator[tuple[int, bytes]]:
    """Submit ``python -c script args`` and yield (arrival time, output) as it comes."""
    params = JobParams(command=sys.executable, args=["-c", script, *args])
    enqueued = await client.enqueue_job(
        EnqueueJobRequest(request_id=str(uuid.uuid4()), queue="default", job_params=params)
    )
    next_sequence = 0
    while True:
        # As `airunner-cli monitor`: a subscriber that falls behind resumes.
        request = StreamJobEventsRequest(job_id=enqueued.job_id, from_sequence=next_sequence)
        try:
            async with aclosing(client.stream_job_events(request)) as events:
                async for response in events:
                    event = response.event
                    if event is None:
                        continue
                    next_sequence = last_sequence_of(event) + 1
                    if event.event_type != EventType.OUTPUT_BATCH:
                        continue
                    now = time.time_ns()
                    for item in event.event_data.value.outputs:  # type: ignore[union-attr]
                        yield now, item.output
            return
        except ConnectError as e:
            if e.code != Code.RESOURCE_EXHAUSTED:
                raise
            print(f"  (the subscriber fell behind; resumed at {next_sequence})", file=sys.stderr)


async def pipe_output(script: str, *args: str) -> AsyncIterator[tuple[int, bytes]]:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", script, *args], stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    async with process.stdout:
        while data := await process.stdout.receive_some(65536):
            yield time.time_ns(), bytes(data)
    await process.wait()


async def throughput(output: AsyncIterator[tuple[int, bytes]]) -> float:
    """MB/s of ``output`` from now to its end."""
    start = time.perf_counter()
    total = 0
    async for _, data in output:
        total += len(data)
    return total / MB / (time.perf_counter() - start)


async def latencies(output: AsyncIterator[tuple[int, bytes]]) -> list[float]:
    """Milliseconds from each line's writing to its arrival."""
    got: list[float] = []
    pending = b""
    async for at, data in output:
        *lines, pending = (pending + data).split(b"\n")
        got.extend((at - int(line)) / 1e6 for line in lines)
    return got


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU time so far of each process, and of this one (the subscriber)."""
    ticks = os.sysconf("SC_CLK_TCK")
    used = {}
    for name, pid in pids.items():
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        used[name] = (int(fields[11]) + int(fields[12])) / ticks
    used["subscriber"] = time.process_time()
    return used


def report(figure: str, now: str, baseline: str, ratio: str, target: str, met: bool) -> None:
    print(
        f"{figure:<34} {now:>14} | baseline {baseline:>14} | {ratio:>7} | "
        f"target {target:<12} {'met' if met else 'NOT met'}"
    )


async def main(megabytes: int, lines: int) -> None:
    total = megabytes * MB
    with server_and_worker(total) as (url, pids):
        async with AirunnerClient(url) as client:
            # A first small job: the worker's start-up (imports, its first
            # poll) is not counted in the first figure's CPU seconds.
            await throughput(job_output(client, PRODUCER, "random", str(MB)))
            for mode in ("random", "repetitive"):
                bare = await throughput(pipe_output(PRODUCER, mode, str(total)))
                before = cpu_seconds(pids)
                ours = await throughput(job_output(client, PRODUCER, mode, str(total)))
                after = cpu_seconds(pids)
                ratio = ours / bare
                report(
                    f"output, {megabytes} MB {mode} text",
                    f"{ours:,.1f} MB/s",
                    f"{bare:,.0f} MB/s",
                    f"{ratio:.1%}",
                    f"≥ {THROUGHPUT_TARGET:.0%}",
                    ratio >= THROUGHPUT_TARGET,
                )
                print(
                    "  CPU seconds per 100 MB: "
                    + ", ".join(
                        f"{name} {(after[name] - before[name]) * 100 / megabytes:.2f}"
                        for name in after
                    )
                )
            bare_ms = await latencies(pipe_output(LINES, str(lines)))
            ours_ms = await latencies(job_output(client, LINES, str(lines)))
            p99, bare_p99 = percentile(ours_ms, 0.99), percentile(bare_ms, 0.99)
            report(
                f"line latency, 1 per 50 ms, n={len(ours_ms)}",
                f"p50 {percentile(ours_ms, 0.5):.1f} p99 {p99:.1f} ms",
                f"p50 {percentile(bare_ms, 0.5):.1f} p99 {bare_p99:.1f}",
                f"{p99 / bare_p99:.1f}x",
                f"p99 ≤ {LATENCY_TARGET_MS:g} ms",
                p99 <= LATENCY_TARGET_MS,
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--megabytes", type=int, default=200, help="of each kind (200)")
    parser.add_argument("--lines", type=int, default=100, help="for the latency (100)")
    args = parser.parse_args()
    # As `airunner-cli monitor` starts (airunner.cli.main).
    keep_buffers_in_heap()
    trio.run(main, args.megabytes, args.lines)
