"""How fast the server hands out jobs, against no-op RPCs in the same run.

Run by hand (not in CI), from the virtualenv that ``./scripts/setup`` made:

    .venv/bin/python -m bench.dispatch [--jobs 2000] [--polls 1000] [--dispatches 300]

Each part starts its own ``airunner-server rpc-server --no-auth`` (memory store)
on 127.0.0.1 and talks to it with connectrpc's sync clients, no airunner client
in between. The no-op RPC is ListJobs of one job on the empty ``priority``
queue of a store that holds no job yet: a full Connect round trip through the
server's HTTP front and auth-free handler, with next to no store work.

1. Job lifecycles (enqueue, dequeue of the job ready, complete) per second,
   one after the other, against no-op RPCs per second: the lifecycle's cost in
   no-op RPCs (3 at best; the target is 3.3), by wall time and by server CPU.
2. ``--polls`` DequeueJob long polls waiting, then ``--dispatches`` jobs
   enqueued one at a time, each once the last was received: enqueue sent →
   job received by a poll, p50/p99/max, against the no-op RTT p99 with the
   same polls waiting (target: p99 ≤ 20 ms and ≤ 3x the no-op p99); and the
   server's CPU while the polls wait and nothing happens.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pyqwest import SyncClient, SyncHTTPTransport

from airunner.api.job.v1.job_connect import JobServiceClientSync
from airunner.api.job.v1.job_pb import (
    CompleteJobRequest,
    DequeueJobRequest,
    EnqueueJobRequest,
    JobParams,
    JobResult,
    ListJobsRequest,
)

TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    url: str
    pid: int
    port: int

    def cpu_seconds(self) -> float:
        """User and system CPU the server process has used so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS


def connections(port: int) -> int:
    """Established TCP connections to 127.0.0.1:``port`` (the server's side of them)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{port:04X}") and fields[3] == "01":
            count += 1
    return count


@contextmanager
def server() -> Iterator[Server]:
    """``airunner-server rpc-server`` on a free 127.0.0.1 port, memory store, no auth."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "AIRUNNER_STORE_TYPE": "memory", "AIRUNNER_LOG_LEVEL": "WARNING"}
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "airunner-server"),
            "rpc-server",
            "--no-auth",
            "--listen",
            f"127.0.0.1:{port}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError("the server did not come up")
        yield Server(url, process.pid, port)
    finally:
        process.terminate()
        process.wait()


def client(url: str) -> JobServiceClientSync:
    return JobServiceClientSync(url, http_client=SyncClient(SyncHTTPTransport()))


def no_op(jobs: JobServiceClientSync) -> None:
    jobs.list_jobs(ListJobsRequest(queue="priority", page_size=1))


def lifecycle(jobs: JobServiceClientSync, number: int) -> None:
    jobs.enqueue_job(
        EnqueueJobRequest(
            request_id=f"bench-{number}", queue="default", job_params=JobParams(command="true")
        )
    )
    (delivery,) = jobs.dequeue_job(
        DequeueJobRequest(queue="default", visibility_timeout_seconds=60)
    )
    assert delivery.job is not None
    jobs.complete_job(
        CompleteJobRequest(
            task_token=delivery.task_token,
            job_result=JobResult(job_id=delivery.job.job_id, success=True),
        )
    )


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


ROUNDS = 6


def lifecycles(count: int) -> None:
    """No-op RPCs and lifecycles in alternating rounds, the ratio per round: a
    noisy machine moves a single long block of either by more than the target's
    margin."""
    ratios: list[float] = []
    cpu_ratios: list[float] = []
    rates: list[tuple[float, float]] = []
    per_round = max(1, count // ROUNDS)
    with server() as running:
        jobs = client(running.url)
        for _ in range(50):
            no_op(jobs)
        number = 0
        for _ in range(ROUNDS):
            cpu, start = running.cpu_seconds(), time.perf_counter()
            for _ in range(per_round):
                no_op(jobs)
            noop_wall = (time.perf_counter() - start) / per_round
            noop_cpu = (running.cpu_seconds() - cpu) / per_round
            cpu, start = running.cpu_seconds(), time.perf_counter()
            for _ in range(per_round):
                lifecycle(jobs, number)
                number += 1
            job_wall = (time.perf_counter() - start) / per_round
            job_cpu = (running.cpu_seconds() - cpu) / per_round
            ratios.append(job_wall / noop_wall)
            cpu_ratios.append(job_cpu / noop_cpu if noop_cpu else float("nan"))
            rates.append((1 / noop_wall, 1 / job_wall))
        jobs.close()
    equivalent = statistics.median(ratios)
    print(
        f"1. Job lifecycles (enqueue, dequeue, complete), {ROUNDS} rounds of {per_round}"
        " no-op RPCs then as many lifecycles"
    )
    print(f"   no-op RPC (ListJobs, empty queue): {statistics.median(r for r, _ in rates):7.0f}/s")
    print(f"   job lifecycles:                    {statistics.median(j for _, j in rates):7.0f}/s")
    print(
        f"   RPCs-per-job equivalent: median {equivalent:.2f} (rounds {min(ratios):.2f}"
        f"-{max(ratios):.2f}; baseline 3 RPCs, target <= 3.3: {verdict(equivalent <= 3.3)});"
        f" server CPU per job {statistics.median(cpu_ratios):.2f}x a no-op's"
    )


def dispatch(polls: int, dispatches: int) -> None:
    with server() as running:
        received: dict[str, float] = {}
        arrived = threading.Condition()
        stopping = threading.Event()
        http = SyncClient(SyncHTTPTransport())
        pollers = JobServiceClientSync(running.url, http_client=http)

        def poll() -> None:
            while not stopping.is_set():
                try:
                    deliveries = list(
                        pollers.dequeue_job(
                            DequeueJobRequest(queue="default", visibility_timeout_seconds=600)
                        )
                    )
                except Exception:
                    if stopping.is_set():
                        return
                    raise
                for delivery in deliveries:
                    at = time.perf_counter()
                    assert delivery.job is not None
                    assert delivery.job.job_params is not None
                    with arrived:
                        received[delivery.job.job_params.args[0]] = at
                        arrived.notify_all()

        threading.stack_size(256 * 1024)
        threads = [threading.Thread(target=poll, daemon=True) for _ in range(polls)]
        for thread in threads:
            thread.start()
        time.sleep(max(2.0, polls / 250))
        open_polls = connections(running.port)

        cpu = running.cpu_seconds()
        idle_seconds = 5.0
        time.sleep(idle_seconds)
        idle = (running.cpu_seconds() - cpu) / idle_seconds

        jobs = client(running.url)
        rtts = []
        for _ in range(dispatches):
            start = time.perf_counter()
            no_op(jobs)
            rtts.append(time.perf_counter() - start)

        latencies = []
        for number in range(dispatches):
            name = f"job-{number}"
            start = time.perf_counter()
            jobs.enqueue_job(
                EnqueueJobRequest(
                    request_id=name,
                    queue="default",
                    job_params=JobParams(command="true", args=[name]),
                )
            )
            with arrived:
                if not arrived.wait_for(lambda name=name: name in received, timeout=30):
                    raise RuntimeError(f"{name} was not received")
                latencies.append(received[name] - start)
        stopping.set()
        jobs.close()
    ms = [latency * 1000 for latency in latencies]
    rtt_p99 = percentile(rtts, 0.99) * 1000
    p99 = percentile(ms, 0.99)
    print(f"2. {polls} DequeueJob long polls waiting, {dispatches} jobs enqueued one at a time")
    print(f"   connections open to the server while the polls wait: {open_polls}")
    print(f"   server CPU while idle: {idle * 100:.1f}% of a core")
    print(
        f"   no-op RTT (ListJobs): p50 {percentile(rtts, 0.5) * 1000:.1f} ms, p99 {rtt_p99:.1f} ms"
    )
    print(
        f"   enqueue -> received: p50 {statistics.median(ms):.1f} ms, p99 {p99:.1f} ms, "
        f"max {max(ms):.1f} ms"
    )
    met = p99 <= 20 and p99 <= 3 * rtt_p99
    print(
        f"   p99 / no-op p99: {p99 / rtt_p99:.1f}x (target p99 <= 20 ms and <= 3x: {verdict(met)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000, help="lifecycles in part 1")
    parser.add_argument("--polls", type=int, default=1000, help="long polls waiting in part 2")
    parser.add_argument("--dispatches", type=int, default=300, help="jobs enqueued in part 2")
    args = parser.parse_args()
    lifecycles(args.jobs)
    dispatch(args.polls, args.dispatches)


if __name__ == "__main__":
    main()
