"""Chaos: real jobs on real workers and servers under faults, then every promise checked.

Run by hand (not in CI), from the virtualenv that ``./scripts/setup`` made:

    .venv/bin/python bench/chaos.py [--store memory|sqs] [--jobs 300] [--workers 8] [--seed 1]

What runs: ``airunner-server rpc-server`` processes (memory: one; sqs: two replicas
sharing queues and tables that ``airunner-server init-aws`` made on moto's server,
started here with DynamoDB requests serialised as in the tests) and ``airunner-cli
worker`` processes (``--visibility-timeout 4 --concurrency 2``; in sqs mode spread over
both replicas). Each job is a shell script that appends ``start``/``end`` lines to a
file of its own, prints a few lines, leaves a long ``sleep`` behind in its process
group (a canary: it outlives the job only if nobody kills the group) and sleeps 1-3 s.

Faults: a busy worker SIGKILLed every ``--kill-every`` seconds (seeded jitter) and
replaced at once, until 90 % of the jobs are final; once a third are final, a worker
running a job and polling for another is SIGSTOPped for longer than its visibility
timeout, then continued; in sqs mode, once half are final, one replica is SIGKILLed
and restarted on the same port. Every request id is submitted twice at once (in sqs
mode once to each replica).

Checked once every job is final: each job is COMPLETED, or FAILED after
max_attempts runs that lost their worker; no two runs of a job overlapped in time
(from the job's file; a run killed with its worker ends when it was first seen
gone); each job's event log (StreamJobEvents from 0) has sequences 1, 2, 3... with
no gap, is a sequence of runs each ending in exactly one final event, the server's
closing events name their run, and its runs match the runs recorded in the file;
only the worker of a job's last run had its CompleteJob accepted, once, and none
after the server failed the job; both submissions of a request id
got the same job and no other job exists; the processes of a SIGKILLed worker's
jobs died with it; no job process is left once the jobs are final.

Prints a summary; exits 1 if any check failed. ``tests/e2e/test_chaos.py`` runs
the same harness, smaller.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AsyncExitStack, aclosing, contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import trio
from connectrpc.errors import ConnectError

from airunner.api.job.v1.job_pb import (
    EnqueueJobRequest,
    EventType,
    JobEvent,
    JobParams,
    JobState,
    ListJobsRequest,
    StreamJobEventsRequest,
)
from airunner.client import AirunnerClient

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FINAL_STATES = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED})
FINAL_EVENTS = frozenset({EventType.PROCESS_END, EventType.PROCESS_ERROR})
# The server's closing event of a run that lost its worker (airunner/store/rules.py).
LOST_RUN = re.compile(
    r"run (\d+) lost its worker \(no heartbeat within its visibility timeout\); "
    r"(?:the job runs again|the job failed: lost its worker (\d+) times)"
)
# A worker log line saying the server accepted its CompleteJob (airunner/worker/_executor.py).
COMPLETED_LINE = re.compile(r"job (\S+): (succeeded|failed) \(exit code -?\d+\)")
# How often the run files and the job processes are looked at.
WATCH_SECONDS = 0.05
# A SIGKILLed worker's job processes must be gone within this long (the watchdog
# reads a pipe that the kernel closes when the worker dies: at once, under load a
# little later).
WATCHDOG_SECONDS = 2.0
# The SIGSTOP waits this long at most for a worker running a job with a slot free.
STOP_CHOICE_SECONDS = 3.0
# A process a worker started as it woke from a freeze, for a delivery it no
# longer held, must have started and ended within this long of waking.
STALE_SECONDS = 1.0
# Variables of the caller's shell that would change what a command does.
_OURS = re.compile(r"^(AIRUNNER_|JWT_|AWS_|OTEL_)")


class ChaosError(Exception):
    """The harness itself could not go on (a server would not start, a wait ran out)."""


@dataclass(frozen=True)
class Plan:
    """How big the run is, and its faults."""

    store: str = "memory"
    jobs: int = 300
    workers: int = 8
    concurrency: int = 2
    visibility: int = 4
    # Seconds between worker SIGKILLs (each +-30 %, seeded), the first 2 s after
    # the jobs are submitted, the last once ``faults_until`` of them are final.
    kill_every: float = 5.0
    faults_until: float = 0.9
    # One worker is SIGSTOPped this long once ``stop_at`` of the jobs are final;
    # in sqs mode a replica is SIGKILLed and restarted once ``replica_at`` are.
    stop_seconds: float = 8.0
    stop_at: float = 1 / 3
    replica_at: float = 1 / 2
    sleep_seconds: tuple[float, float] = (1.0, 3.0)
    # The server's AIRUNNER_MAX_ATTEMPTS; every ``one_run_every``-th job asks for
    # one run only (JobParams.max_attempts = 1), so that some jobs fail under chaos.
    max_attempts: int = 3
    one_run_every: int = 5
    seed: int = 1
    # Every job is final within this long after submission, or the run fails.
    final_within: float = 300.0

    def kill_times(self) -> Iterator[float]:
        """Seconds after submission at which a worker is SIGKILLed (seeded)."""
        rng = random.Random(self.seed)
        at = 2.0
        while True:
            yield at
            at += self.kill_every * rng.uniform(0.7, 1.3)


@dataclass
class Run:
    """One run of a job as its script recorded it."""

    job_id: str
    pid: int
    # The worker that started it.
    ppid: int
    start_ns: int
    end_ns: int | None = None
    # When it was first seen gone without an end line (killed): its end, give or
    # take WATCH_SECONDS.
    gone_ns: int | None = None

    @property
    def ended_ns(self) -> int | None:
        return self.end_ns if self.end_ns is not None else self.gone_ns


@dataclass(frozen=True)
class Kill:
    pid: int
    at_ns: int


@dataclass
class Report:
    plan: Plan
    completed: int = 0
    failed: int = 0
    # Runs the server counted (final events in the logs), and those that lost their worker.
    runs: int = 0
    lost_runs: int = 0
    # Runs whose process was recorded starting, and lost runs whose process never
    # started (their worker died or froze between taking the job up and starting it).
    recorded_runs: int = 0
    lost_before_start: int = 0
    kills: int = 0
    # Job processes running when their worker was SIGKILLed, and the longest any
    # of them lived on (seen within WATCH_SECONDS).
    killed_processes: int = 0
    watchdog_seconds: float = 0.0
    stops: int = 0
    # How many jobs each SIGSTOPped worker was running.
    stopped_running: list[int] = field(default_factory=list)
    # When each SIGSTOPped worker was woken.
    woken: list[Kill] = field(default_factory=list)
    # Runs a worker started as it woke, for a delivery it had checked just before
    # its freeze, and stopped at once when the server refused it.
    stale_starts: list[str] = field(default_factory=list)
    replica_restarts: int = 0
    submissions: int = 0
    final_after: float = 0.0
    duration: float = 0.0
    overlaps: list[str] = field(default_factory=list)
    log_violations: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    work_dir: Path | None = None

    @property
    def ok(self) -> bool:
        return not (self.overlaps or self.log_violations or self.violations)

    def summary(self) -> str:
        plan = self.plan
        lines = [
            f"chaos, {plan.store} store: {plan.jobs} jobs, {plan.workers} workers x "
            f"{plan.concurrency}, visibility timeout {plan.visibility} s, seed {plan.seed}",
            f"faults: {self.kills} workers SIGKILLed, {self.stops} SIGSTOPped for "
            f"{plan.stop_seconds:g} s (running {self.stopped_running} jobs), "
            f"{self.replica_restarts} replicas SIGKILLed and restarted; "
            f"{self.submissions} EnqueueJob calls",
            f"jobs: {self.completed} completed, {self.failed} failed "
            f"(one in {plan.one_run_every} may run once only)",
            f"runs: {self.runs} ({self.lost_runs} lost their worker, "
            f"{self.lost_before_start} of them before the job's process started); "
            f"processes recorded: {self.recorded_runs}",
            f"processes of SIGKILLed workers: {self.killed_processes}, all gone within "
            f"{self.watchdog_seconds:.2f} s",
            f"stale starts as a worker woke, stopped at once: {len(self.stale_starts)}",
            f"overlaps: {len(self.overlaps)}",
            f"log violations: {len(self.log_violations)}",
            f"other violations: {len(self.violations)}",
            f"duration: {self.duration:.1f} s (every job final {self.final_after:.1f} s "
            "after submission)",
        ]
        for title, found in (
            ("overlap", self.overlaps),
            ("log violation", self.log_violations),
            ("violation", self.violations),
        ):
            lines.extend(f"  {title}: {text}" for text in found[:50])
        if not self.ok and self.work_dir is not None:
            lines.append(f"logs and run files: {self.work_dir}")
        return "\n".join(lines)


def clean_env(**extra: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not _OURS.match(k)} | extra


def free_port() -> int:
    """A free port below the ephemeral range, so that no outgoing connection takes
    it while a replica restarts on it."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    chooser = random.SystemRandom()
    for _ in range(100):
        port = chooser.randrange(max(1024, low - 12000), low)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise ChaosError("no free port")


async def wait_until(condition: Callable[[], bool], what: str, seconds: float) -> None:
    """Wait, looking again every WATCH_SECONDS, until ``condition()`` holds."""
    try:
        with trio.fail_after(seconds):
            while not condition():  # noqa: ASYNC110
                await trio.sleep(WATCH_SECONDS)
    except trio.TooSlowError:
        raise ChaosError(f"timed out after {seconds:g} s waiting for {what}") from None


class Progress:
    """Wakes the tasks that wait for a condition on the run's progress to hold."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def wake(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self._event.wait()


# Processes.


@dataclass
class Started:
    """A process started here, its stderr in a file."""

    process: trio.Process
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    async def kill(self) -> None:
        with suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        await self.process.wait()

    async def stop(self, seconds: float) -> None:
        """SIGTERM, then SIGKILL if it has not ended within ``seconds``."""
        if self.alive():
            with suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)
                os.kill(self.pid, signal.SIGTERM)
            with trio.move_on_after(seconds):
                await self.process.wait()
        await self.kill()


async def start_process(argv: Sequence[str], env: Mapping[str, str], log: Path) -> Started:
    with log.open("ab") as stderr:
        process = await trio.lowlevel.open_process(
            list(argv), env=dict(env), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
    return Started(process, log)


def logged(path: Path, text: str) -> bool:
    try:
        return text.encode() in path.read_bytes()
    except FileNotFoundError:
        return False


@dataclass
class Worker:
    slot: int
    replica: int
    started: Started
    stopped: bool = False


# The job: a script recording its run.

SCRIPT = """\
f={runs}/"$AIRUNNER_JOB_ID"
echo "start $AIRUNNER_JOB_ID $(date +%s%N) $$ $PPID" >> "$f"
{canary} 600 </dev/null >/dev/null 2>&1 &
echo "run of $AIRUNNER_JOB_ID, request $2"
echo "sleeping $1 s"
echo "to stderr" >&2
{sleep} "$1"
echo "done"
echo "end $AIRUNNER_JOB_ID $(date +%s%N) $$" >> "$f"
"""


class RunWatcher:
    """Follows the run files as the scripts append to them, and sees killed runs go.

    ``marker`` is in the command line of every process a job starts (the shell's
    ``$0``, the sleeps' program names), and in no other process's.
    """

    def __init__(self, runs_dir: Path, marker: str) -> None:
        self.runs_dir = runs_dir
        self.marker = marker.encode()
        self.runs: dict[str, list[Run]] = {}
        self._read: dict[str, int] = {}
        self._open: dict[int, Run] = {}
        # The request id each job's processes carry (their last argument).
        self.request_ids: dict[str, str] = {}

    async def watch(self) -> None:
        while True:
            self.scan()
            await trio.sleep(WATCH_SECONDS)

    def scan(self) -> None:
        for entry in os.scandir(self.runs_dir):
            if entry.stat().st_size != self._read.get(entry.name, 0):
                self._read_file(entry.name)
        now = time.time_ns()
        for pid, run in list(self._open.items()):
            if run.end_ns is not None:
                del self._open[pid]
            elif not self._alive(run):
                run.gone_ns = now
                del self._open[pid]

    def running(self) -> Counter[int]:
        """How many job processes each worker (by pid) is running."""
        self.scan()
        return Counter(run.ppid for run in self._open.values())

    def _read_file(self, name: str) -> None:
        offset = self._read.get(name, 0)
        with (self.runs_dir / name).open("rb") as file:
            file.seek(offset)
            data = file.read()
        complete = data[: data.rfind(b"\n") + 1]
        self._read[name] = offset + len(complete)
        for line in complete.decode().splitlines():
            match line.split():
                case ["start", job_id, at, pid, ppid]:
                    run = Run(job_id, int(pid), int(ppid), int(at))
                    self.runs.setdefault(job_id, []).append(run)
                    self._open[run.pid] = run
                case ["end", job_id, at, pid]:
                    for run in self.runs.get(job_id, []):
                        if run.pid == int(pid) and run.end_ns is None:
                            run.end_ns = int(at)
                case _:
                    raise ChaosError(f"run file {name}: unexpected line {line!r}")

    def _alive(self, run: Run) -> bool:
        # The job's own argument, so that another job's process reusing the pid
        # is not taken for it.
        request_id = self.request_ids.get(run.job_id)
        cmdline = _cmdline(run.pid)
        return (
            cmdline is not None
            and self.marker in cmdline
            and (request_id is None or cmdline.endswith(b"\0" + request_id.encode() + b"\0"))
        )

    def live_processes(self) -> list[str]:
        """Every process a job started that is still running (zombies do not count)."""
        found = []
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                cmdline = _cmdline(int(entry.name))
                if cmdline is not None and self.marker in cmdline:
                    shown = cmdline.replace(b"\0", b" ")[:120]
                    found.append(f"pid {entry.name}: {shown!r}")
        return found

    def live_pids(self) -> list[int]:
        return [int(text.split()[1].rstrip(":")) for text in self.live_processes()]


def _cmdline(pid: int) -> bytes | None:
    """The command line of a running process; None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return None
        return Path(f"/proc/{pid}/cmdline").read_bytes() or None
    except (OSError, IndexError):
        return None


# The run.


class Chaos:
    def __init__(self, plan: Plan, work_dir: Path, aws_env: Mapping[str, str] | None) -> None:
        if plan.store not in ("memory", "sqs"):
            raise ChaosError(f"unknown store {plan.store!r}")
        if plan.store == "sqs" and aws_env is None:
            raise ChaosError("the sqs store needs AWS settings (moto's server)")
        self.plan = plan
        self.work_dir = work_dir
        self.aws_env = dict(aws_env or {})
        # The seeded choices (job lengths, whom to kill or stop), and the others.
        self.rng = random.Random(plan.seed)
        self._any = random.Random()
        self.marker = f"chaos{uuid.uuid4().hex[:12]}"
        self.logs = work_dir / "logs"
        self.runs_dir = work_dir / "runs"
        self.bin_dir = work_dir / "bin"
        for directory in (self.logs, self.runs_dir, self.bin_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self.watcher = RunWatcher(self.runs_dir, self.marker)
        self.report = Report(plan, work_dir=work_dir)
        self.server_env: dict[str, str] = {}
        self.ports: list[int] = []
        self.replicas: list[Started] = []
        self.workers: list[Worker] = []
        self.retired: list[Started] = []
        self.kills: list[Kill] = []
        # Runs each job may have.
        self.max_attempts: dict[str, int] = {}
        # The jobs final so far, as a fraction of all, and a wake-up when it grows.
        self.final_fraction = 0.0
        self._progressed = Progress()
        self._generation = Counter[str]()

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.ports]

    # Servers and workers.

    async def init_aws(self) -> dict[str, str]:
        name = f"chaos-{uuid.uuid4().hex[:8]}"
        done = await trio.run_process(
            [str(BIN / "airunner-server"), "init-aws", "--environment", name,
             "--jobs-table", f"jobs-{name}", "--events-table", f"events-{name}"],
            env=clean_env(**self.aws_env), capture_stdout=True, capture_stderr=True,
            check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise ChaosError(f"init-aws failed: {done.stderr.decode()}")
        exports = {}
        for line in done.stdout.decode().splitlines():
            name_value = line.removeprefix("export ")
            key, _, value = name_value.partition("=")
            exports[key] = value.strip("'\"")
        return exports

    async def start_replica(self, index: int) -> Started:
        self._generation[f"replica{index}"] += 1
        log = self.logs / f"replica-{index}-{self._generation[f'replica{index}']}.log"
        started = await start_process(
            [str(BIN / "airunner-server"), "rpc-server", "--no-auth", "--log-format", "json",
             "--listen", f"127.0.0.1:{self.ports[index]}", "--grace-period", "5"],
            self.server_env, log,
        )  # fmt: skip

        def serving() -> bool:
            if not started.alive():
                raise ChaosError(f"replica {index} exited: {log.read_text()[-2000:]}")
            return logged(log, "airunner serving on")

        await wait_until(serving, f"replica {index} to serve", 60)
        return started

    async def start_worker(self, slot: int, replica: int) -> Worker:
        self._generation[f"worker{slot}"] += 1
        generation = self._generation[f"worker{slot}"]
        work = self.work_dir / "work" / f"{slot}-{generation}"
        started = await start_process(
            [str(BIN / "airunner-cli"), "worker", "--server", self.urls[replica],
             "--work-dir", str(work), "--visibility-timeout", str(self.plan.visibility),
             "--concurrency", str(self.plan.concurrency), "--log-format", "json"],
            clean_env(), self.logs / f"worker-{slot}-{generation}.log",
        )  # fmt: skip
        return Worker(slot, replica, started)

    # Faults.

    async def kill_worker(self) -> None:
        candidates = [w for w in self.workers if not w.stopped]
        running = self.watcher.running()
        busy = [w for w in candidates if running[w.started.pid]]
        victim = self.rng.choice(busy or candidates)
        self.kills.append(Kill(victim.started.pid, time.time_ns()))
        self._note(f"SIGKILL worker {victim.slot} pid {victim.started.pid}")
        await victim.started.kill()
        self.retired.append(victim.started)
        self.report.kills += 1
        replacement = await self.start_worker(victim.slot, victim.replica)
        self.workers[self.workers.index(victim)] = replacement

    async def stop_worker(self) -> None:
        seconds = self.plan.stop_seconds
        # Preferably one running a job and polling for another (waiting a little for
        # one): its run is lost, and a job delivered to its open poll meanwhile is
        # stale when it wakes up.
        with trio.move_on_after(STOP_CHOICE_SECONDS):
            while not self._stop_candidates()[0]:  # noqa: ASYNC110
                await trio.sleep(WATCH_SECONDS)
        both, busy, candidates = self._stop_candidates()
        victim = self.rng.choice(both or busy or candidates)
        running = self.watcher.running()
        self.report.stopped_running.append(running[victim.started.pid])
        victim.stopped = True
        os.kill(victim.started.pid, signal.SIGSTOP)
        self._note(f"SIGSTOP worker {victim.slot} pid {victim.started.pid}")
        self.report.stops += 1
        try:
            await trio.sleep(seconds)
        finally:
            with suppress(ProcessLookupError):
                os.kill(victim.started.pid, signal.SIGCONT)
            self.report.woken.append(Kill(victim.started.pid, time.time_ns()))
            self._note(f"SIGCONT worker {victim.slot} pid {victim.started.pid}")
            victim.stopped = False

    def _note(self, fault: str) -> None:
        """Log a fault with its wall-clock time (for a post-mortem beside the run files)."""
        with (self.logs / "faults.log").open("a") as log:
            log.write(f"{time.time_ns()} {fault}\n")

    def _stop_candidates(self) -> tuple[list[Worker], list[Worker], list[Worker]]:
        """Workers running a job with a slot free, those running any, and all (not stopped)."""
        candidates = [w for w in self.workers if not w.stopped]
        running = self.watcher.running()
        both = [w for w in candidates if 0 < running[w.started.pid] < self.plan.concurrency]
        busy = [w for w in candidates if running[w.started.pid]]
        return both, busy, candidates

    async def kill_replica(self) -> None:
        index = self.rng.randrange(len(self.replicas))
        self._note(f"SIGKILL replica {index} pid {self.replicas[index].pid}")
        await self.replicas[index].kill()
        self.retired.append(self.replicas[index])
        self.replicas[index] = await self.start_replica(index)
        self.report.replica_restarts += 1

    async def chaos(self, began: float) -> None:
        plan = self.plan
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._when_final, plan.stop_at, self.stop_worker)
            if plan.store == "sqs":
                nursery.start_soon(self._when_final, plan.replica_at, self.kill_replica)
            for at in plan.kill_times():
                await trio.sleep_until(began + at)
                if self.final_fraction >= plan.faults_until:
                    break
                await self.kill_worker()

    async def _when_final(self, fraction: float, fault: Callable[[], Awaitable[None]]) -> None:
        """Inflict ``fault`` once ``fraction`` of the jobs are final."""
        await self._progressed.wait_for(lambda: self.final_fraction >= fraction)
        await fault()

    # Jobs.

    def job_params(self, index: int, request_id: str) -> JobParams:
        one_run = self.plan.one_run_every > 0 and index % self.plan.one_run_every == 0
        low, high = self.plan.sleep_seconds
        seconds = round(self.rng.uniform(low, high), 2)
        script = SCRIPT.format(
            runs=self.runs_dir,
            canary=self.bin_dir / f"{self.marker}-canary",
            sleep=self.bin_dir / f"{self.marker}-sleep",
        )
        return JobParams(
            command="sh",
            args=["-c", script, f"{self.marker}-job", str(seconds), request_id],
            max_attempts=1 if one_run else 0,
        )

    async def submit_all(self, clients: Sequence[AirunnerClient]) -> dict[str, str]:
        """Each request id at once through two clients; returns request id -> job id."""
        job_ids: dict[str, str] = {}
        answers: dict[str, list[str]] = {}
        limit = trio.CapacityLimiter(16)

        async def enqueue(client: AirunnerClient, request: EnqueueJobRequest) -> None:
            async with limit:
                for attempt in range(10):
                    try:
                        response = await client.enqueue_job(request, rpc_timeout=30)
                        break
                    except ConnectError as e:
                        # "being created; retry": the other request is writing the job.
                        if attempt == 9:
                            raise ChaosError(f"EnqueueJob kept failing: {e.message}") from e
                        await trio.sleep(0.2 * (attempt + 1))
            answers.setdefault(request.request_id, []).append(response.job_id)

        requests: dict[str, JobParams] = {}
        async with trio.open_nursery() as nursery:
            for index in range(self.plan.jobs):
                request_id = f"{self.marker}-{index}"
                requests[request_id] = self.job_params(index, request_id)
                request = EnqueueJobRequest(
                    request_id=request_id, queue="default", job_params=requests[request_id]
                )
                pair = [clients[0], clients[-1]]
                for client in pair:
                    nursery.start_soon(enqueue, client, request)
                self.report.submissions += 2
        for request_id, ids in sorted(answers.items()):
            if len(set(ids)) != 1:
                self.report.violations.append(
                    f"request id {request_id} gave different jobs: {ids}"
                )
            job_ids[request_id] = ids[0]
            self.watcher.request_ids[ids[0]] = request_id
            self.max_attempts[ids[0]] = requests[request_id].max_attempts or self.plan.max_attempts
        return job_ids

    async def states(self, clients: Sequence[AirunnerClient]) -> dict[str, JobState]:
        """Every job's state, from whichever replica answers."""
        for client in self._any.sample(list(clients), len(clients)):
            try:
                page = await client.list_jobs(
                    ListJobsRequest(queue="default", page=1, page_size=1000), rpc_timeout=10
                )
            except ConnectError:
                continue
            return {job.job_id: job.state for job in page.jobs}
        return {}

    async def wait_final(self, clients: Sequence[AirunnerClient], job_ids: set[str]) -> None:
        """Until every job is final; keeps ``final_fraction`` up to date meanwhile."""
        try:
            with trio.fail_after(self.plan.final_within):
                while True:
                    states = await self.states(clients)
                    final = sum(states.get(j) in FINAL_STATES for j in job_ids)
                    if states:
                        self.final_fraction = final / len(job_ids)
                        self._progressed.wake()
                    if final == len(job_ids):
                        break
                    # ListJobs reads every job: on moto, not too often.
                    await trio.sleep(1)
        except trio.TooSlowError:
            states = await self.states(clients)
            pending = sorted(j for j in job_ids if states.get(j) not in FINAL_STATES)
            raise ChaosError(
                f"{len(pending)} jobs not final after {self.plan.final_within:g} s: "
                + ", ".join(f"{j} {states.get(j)!r}" for j in pending[:10])
            ) from None

    async def events(self, client: AirunnerClient, job_id: str) -> list[JobEvent]:
        """The job's whole event log; the stream ends after its final event."""
        for attempt in range(5):
            events = []
            try:
                with trio.fail_after(30):
                    request = StreamJobEventsRequest(job_id=job_id, from_sequence=0)
                    async with aclosing(client.stream_job_events(request)) as stream:
                        async for response in stream:
                            if response.event is not None:
                                events.append(response.event)
                return events
            except ConnectError:
                if attempt == 4:
                    raise
                await trio.sleep(1)
        raise AssertionError("unreachable")

    # The whole run.

    async def run(self) -> Report:
        began = trio.current_time()
        plan = self.plan
        for name in ("canary", "sleep"):
            (self.bin_dir / f"{self.marker}-{name}").symlink_to(shutil.which("sleep") or "sleep")
        self.server_env = clean_env(
            AIRUNNER_TOKEN_SIGNING_SECRET=f"chaos-{self.marker}",
            AIRUNNER_MAX_ATTEMPTS=str(plan.max_attempts),
        )
        replicas = 1
        if plan.store == "sqs":
            self.server_env |= self.aws_env | await self.init_aws()
            replicas = 2
        self.ports = [free_port() for _ in range(replicas)]
        try:
            async with AsyncExitStack() as stack:
                started: dict[int, Started] = {}
                async with trio.open_nursery() as nursery:
                    for index in range(replicas):
                        nursery.start_soon(self._start_initial_replica, index, started)
                self.replicas = [started[index] for index in range(replicas)]
                clients = [
                    await stack.enter_async_context(AirunnerClient(url)) for url in self.urls
                ]
                for slot in range(plan.workers):
                    self.workers.append(await self.start_worker(slot, slot % replicas))
                for worker in self.workers:
                    await wait_until(
                        partial(logged, worker.started.log, "worker polling queue"),
                        f"worker {worker.slot} to poll",
                        60,
                    )
                await self._run_jobs(clients)
        finally:
            await self._cleanup()
        self.report.duration = trio.current_time() - began
        return self.report

    async def _start_initial_replica(self, index: int, started: dict[int, Started]) -> None:
        started[index] = await self.start_replica(index)
        self.replicas.append(started[index])  # stopped by _cleanup even if a later step fails

    async def _run_jobs(self, clients: list[AirunnerClient]) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.watcher.watch)
            submitted = trio.current_time()
            job_ids = await self.submit_all(clients)
            # The faults run their course, and the jobs end, in whichever order.
            async with trio.open_nursery() as run:
                run.start_soon(self.chaos, submitted)
                run.start_soon(self.wait_final, clients, set(job_ids.values()))
            self.report.final_after = trio.current_time() - submitted
            states = await self.states(clients)
            # Every job process ends: a stale run's once its worker hears it lost
            # its delivery, the canaries with their jobs' process groups.
            with suppress(ChaosError):
                await wait_until(
                    lambda: not self.watcher.live_processes(), "job processes to end", 15
                )
            self.watcher.scan()
            nursery.cancel_scope.cancel()
        for text in self.watcher.live_processes():
            self.report.violations.append(f"a job process outlived every job: {text}")
        async with trio.open_nursery() as nursery:
            for worker in self.workers:
                nursery.start_soon(worker.started.stop, 10)
        logs: dict[str, list[JobEvent]] = {}
        limit = trio.CapacityLimiter(8)

        async def fetch(job_id: str) -> None:
            async with limit:
                logs[job_id] = await self.events(self._any.choice(clients), job_id)

        async with trio.open_nursery() as nursery:
            for job_id in job_ids.values():
                nursery.start_soon(fetch, job_id)
        self._write_logs(logs)
        self.check(job_ids, states, logs)

    def _write_logs(self, logs: Mapping[str, list[JobEvent]]) -> None:
        """Each job's event log, one line an event, beside the run files (for a post-mortem)."""
        events_dir = self.work_dir / "events"
        events_dir.mkdir(exist_ok=True)
        for job_id, events in logs.items():
            lines = [f"{event.sequence} {_describe(event)}" for event in events]
            (events_dir / job_id).write_text("".join(line + "\n" for line in lines))

    async def _cleanup(self) -> None:
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as nursery:
                for worker in self.workers:
                    nursery.start_soon(worker.started.kill)
                for replica in self.replicas:
                    nursery.start_soon(replica.stop, 10)
            # Anything a job left behind, by pid.
            for pid in self.watcher.live_pids():
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    # The checks.

    def check(
        self,
        job_ids: Mapping[str, str],
        states: Mapping[str, JobState],
        logs: Mapping[str, list[JobEvent]],
    ) -> None:
        report = self.report
        unknown = set(states) - set(job_ids.values())
        if unknown:
            report.violations.append(f"jobs nobody submitted: {sorted(unknown)}")
        # Which worker (by pid) had its CompleteJob accepted, for each job.
        completions: dict[str, list[tuple[int, str]]] = {}
        for started in [*self.retired, *(w.started for w in self.workers)]:
            for job_id, outcome in _completions(started.log):
                completions.setdefault(job_id, []).append((started.pid, outcome))
        for job_id, found in completions.items():
            if len(found) > 1:
                report.violations.append(f"{job_id}: completed {len(found)} times: {found}")
        for job_id in sorted(job_ids.values()):
            state = states.get(job_id, JobState.UNSPECIFIED)
            runs = sorted(self.watcher.runs.get(job_id, []), key=lambda r: r.start_ns)
            self._check_job(job_id, state, logs[job_id], runs)
            self._check_completion(job_id, state, logs[job_id], runs, completions.get(job_id, []))
        self._check_killed_workers()

    def _check_job(
        self, job_id: str, state: JobState, events: list[JobEvent], runs: list[Run]
    ) -> None:
        report = self.report
        problems = report.log_violations
        if state == JobState.COMPLETED:
            report.completed += 1
        elif state == JobState.FAILED:
            report.failed += 1
        else:
            report.violations.append(f"{job_id}: {state.name}, not COMPLETED or FAILED")
        report.recorded_runs += len(runs)
        max_attempts = self.max_attempts[job_id]

        expected = 1
        for event in events:
            if event.sequence != expected:
                problems.append(f"{job_id}: sequence {event.sequence} where {expected} was due")
            expected = _last_sequence(event, problems, job_id) + 1

        segments: list[list[JobEvent]] = [[]]
        for event in events:
            segments[-1].append(event)
            if event.event_type in FINAL_EVENTS:
                segments.append([])
        if segments[-1]:
            problems.append(f"{job_id}: its log does not end in a final event")
        segments = segments[:-1]
        report.runs += len(segments)
        if len(segments) > max_attempts:
            problems.append(f"{job_id}: {len(segments)} runs, more than max_attempts")

        pids: list[int | None] = []
        for number, segment in enumerate(segments, 1):
            starts = [i for i, e in enumerate(segment) if e.event_type == EventType.PROCESS_START]
            if starts not in ([], [0]):
                problems.append(f"{job_id}: run {number} has PROCESS_START at {starts}")
            pids.append(_pid(segment[0]) if starts == [0] else None)
            final = segment[-1]
            if final.event_type == EventType.PROCESS_ERROR:
                message = _error_message(final)
                lost = LOST_RUN.fullmatch(message)
                if lost is None:
                    problems.append(f"{job_id}: run {number} ended in error: {message}")
                elif int(lost[1]) != number:
                    problems.append(f"{job_id}: run {number} closed as run {lost[1]}")
                elif lost[2] is not None and (
                    number != len(segments) or int(lost[2]) != max_attempts
                ):
                    problems.append(f"{job_id}: run {number} closed as the last: {message}")
            elif not starts:
                problems.append(f"{job_id}: run {number} ended without starting")
        last = segments[-1][-1] if segments else None
        if state == JobState.COMPLETED and (
            last is None or last.event_type != EventType.PROCESS_END or _exit_code(last) != 0
        ):
            problems.append(f"{job_id}: COMPLETED, but its last run did not exit 0")
        # A FAILED job's last run either stored the server's closing event, or had
        # stored its PROCESS_END and lost its worker before CompleteJob.
        if state == JobState.FAILED and (
            len(segments) != max_attempts
            or last is None
            or (
                last.event_type == EventType.PROCESS_ERROR
                and "the job failed: lost its worker" not in _error_message(last)
            )
        ):
            problems.append(
                f"{job_id}: FAILED after {len(segments)} runs, last event {_describe(last)}"
            )
        report.lost_runs += max(0, len(segments) - (state == JobState.COMPLETED))

        # The runs the server counted are the runs the file recorded, in order,
        # except a lost run whose process never started (or never said so).
        in_log = {pid for pid in pids if pid is not None}
        position = 0
        for number, pid in enumerate(pids, 1):
            if pid is not None:
                found = [i for i, run in enumerate(runs) if i >= position and run.pid == pid]
                if not found:
                    problems.append(f"{job_id}: run {number} (pid {pid}) was never recorded")
                    continue
                for skipped in runs[position : found[0]]:
                    if not self._stale_start(job_id, skipped):
                        problems.append(
                            f"{job_id}: a recorded run the server did not count, before run "
                            f"{number}: pid {skipped.pid} (worker {skipped.ppid}) started at "
                            f"{skipped.start_ns}"
                        )
                position = found[0] + 1
            elif position < len(runs) and runs[position].pid not in in_log:
                position += 1
            else:
                report.lost_before_start += 1
        for run in runs[position:]:
            if not self._stale_start(job_id, run):
                problems.append(
                    f"{job_id}: a recorded run the server did not count: pid {run.pid} "
                    f"(worker {run.ppid}) started at {run.start_ns}"
                )
        # A stale start is no run the server counted: it must not overlap one.
        runs = [run for run in runs if f"{job_id} pid {run.pid}" not in report.stale_starts]

        for earlier, later in itertools.pairwise(runs):
            ended = earlier.ended_ns
            if ended is None or ended >= later.start_ns:
                report.overlaps.append(
                    f"{job_id}: run pid {earlier.pid} (worker {earlier.ppid}, "
                    f"{earlier.start_ns}..{ended}, end line {earlier.end_ns is not None}) and "
                    f"run pid {later.pid} (worker {later.ppid}, from {later.start_ns})"
                )

    def _stale_start(self, job_id: str, run: Run) -> bool:
        """Whether ``run`` is a stale start: begun by a worker just woken from a freeze
        (it had checked its delivery before the freeze, the process forked after
        it), and stopped at once. Each one is counted in the report."""
        ended = run.ended_ns
        woke = any(
            # The wake is noted just after the signal went: allow a little before it.
            woken.pid == run.ppid and -0.2e9 <= run.start_ns - woken.at_ns <= STALE_SECONDS * 1e9
            for woken in self.report.woken
        )
        if not woke or ended is None or ended - run.start_ns > STALE_SECONDS * 1e9:
            return False
        self.report.stale_starts.append(f"{job_id} pid {run.pid}")
        return True

    def _check_completion(
        self,
        job_id: str,
        state: JobState,
        events: list[JobEvent],
        runs: list[Run],
        completed_by: list[tuple[int, str]],
    ) -> None:
        """Only the holder of the job's last run completes it, and only if the server
        did not fail it first (its last run lost its worker)."""
        last = events[-1] if events else None
        starts = [e for e in events if e.event_type == EventType.PROCESS_START]
        last_run = next((r for r in runs if starts and r.pid == _pid(starts[-1])), None)
        for worker, outcome in completed_by:
            if last is not None and "the job failed: lost its worker" in _error_message(last):
                self.report.violations.append(
                    f"{job_id}: the server failed it ({_error_message(last)}), and then "
                    f"accepted the CompleteJob ({outcome}) of worker {worker}'s stale delivery"
                )
            elif last_run is not None and last_run.ppid != worker:
                self.report.violations.append(
                    f"{job_id}: completed ({outcome}) by worker {worker}, but its last run "
                    f"was worker {last_run.ppid}'s"
                )
            elif (outcome == "succeeded") != (state == JobState.COMPLETED):
                self.report.violations.append(
                    f"{job_id}: {state.name}, but worker {worker} completed it: {outcome}"
                )

    def _check_killed_workers(self) -> None:
        """A SIGKILLed worker's job processes die with it (its watchdogs kill their groups)."""
        for kill in self.kills:
            for runs in self.watcher.runs.values():
                for run in runs:
                    if run.ppid != kill.pid or run.start_ns > kill.at_ns:
                        continue
                    ended = run.ended_ns
                    if run.end_ns is not None and run.end_ns <= kill.at_ns:
                        continue
                    self.report.killed_processes += 1
                    if ended is not None:
                        self.report.watchdog_seconds = max(
                            self.report.watchdog_seconds, (ended - kill.at_ns) / 1e9
                        )
                    if ended is None or ended - kill.at_ns > WATCHDOG_SECONDS * 1e9:
                        late = "never" if ended is None else f"{(ended - kill.at_ns) / 1e9:.2f} s"
                        self.report.violations.append(
                            f"{run.job_id}: pid {run.pid} ended {late} after its worker "
                            f"{kill.pid} was SIGKILLed (end line: {run.end_ns is not None})"
                        )


def _last_sequence(event: JobEvent, problems: list[str], job_id: str) -> int:
    data = event.event_data
    if event.event_type == EventType.OUTPUT_BATCH and data is not None:
        if data.field != "output_batch":
            problems.append(f"{job_id}: event {event.sequence} is an output batch without one")
            return event.sequence
        batch = data.value
        start, end = batch.start_sequence, batch.end_sequence
        if start != event.sequence or end < start:
            problems.append(f"{job_id}: output batch {event.sequence} covers {start}..{end}")
        return max(int(end), event.sequence)
    return event.sequence


def _pid(event: JobEvent) -> int:
    data = event.event_data
    if data is None or data.field != "process_start":
        return 0
    return int(data.value.pid)


def _exit_code(event: JobEvent) -> int | None:
    data = event.event_data
    if data is None or data.field != "process_end":
        return None
    return int(data.value.exit_code)


def _error_message(event: JobEvent) -> str:
    data = event.event_data
    if data is None or data.field != "process_error":
        return ""
    return str(data.value.error_message)


def _describe(event: JobEvent | None) -> str:
    if event is None:
        return "none"
    detail = ""
    if event.event_type == EventType.PROCESS_ERROR:
        detail = _error_message(event)
    elif event.event_type == EventType.PROCESS_START:
        detail = f"pid {_pid(event)}"
    elif event.event_type == EventType.PROCESS_END:
        detail = f"exit code {_exit_code(event)}"
    return f"{event.event_type.name} {detail}".strip()


def _completions(log: Path) -> Iterator[tuple[str, str]]:
    """The jobs a worker's log says it completed, and how ("succeeded", "failed")."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return
    for line in lines:
        try:
            message = json.loads(line).get("message", "")
        except (json.JSONDecodeError, AttributeError):
            continue
        if found := COMPLETED_LINE.fullmatch(message):
            yield found[1], found[2]


async def run_chaos(
    plan: Plan, work_dir: Path, *, aws_env: Mapping[str, str] | None = None
) -> Report:
    """Run ``plan``'s jobs under its faults in ``work_dir``; return what was found.

    ``aws_env``: the AWS settings of moto's server, for the sqs store.
    """
    return await Chaos(plan, work_dir, aws_env).run()


# Run by hand.


@contextmanager
def moto_server() -> Iterator[dict[str, str]]:
    """moto's server on 127.0.0.1, DynamoDB requests serialised (tests/moto_serial.py)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.moto_serial", "127.0.0.1", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
        env=clean_env(),
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
        yield {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    finally:
        process.terminate()
        process.wait(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=("memory", "sqs"), default="memory")
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--kill-every", type=float, default=5.0, metavar="SECONDS")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--work-dir", type=Path, help="where logs and run files go (default: a new temp dir)"
    )
    args = parser.parse_args()
    plan = Plan(
        store=args.store,
        jobs=args.jobs,
        workers=args.workers,
        kill_every=args.kill_every,
        seed=args.seed,
        # moto's serialised DynamoDB runs about 2.5 jobs a second, the memory store 7.
        final_within=120 + args.jobs * (1.5 if args.store == "sqs" else 0.5),
    )
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="airunner-chaos-"))
    print(f"chaos: {args.store} store, work dir {work_dir}", flush=True)
    if args.store == "sqs":
        with moto_server() as aws_env:
            report = trio.run(lambda: run_chaos(plan, work_dir, aws_env=aws_env))
    else:
        report = trio.run(lambda: run_chaos(plan, work_dir))
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
