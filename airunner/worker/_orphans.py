"""OrphanReaper: ends and reaps what a job leaves running outside its process group.

Killing a job's process group misses a process that left it: one that called
``setsid`` (a daemon, ``nohup``-like tools, a double fork). The worker makes
itself a child subreaper (``become_subreaper``), so when such a process's
parent dies it becomes the worker's child instead of init's. After a job's
command ends, everything of the job that is still alive hangs, through its
parents, below one of the worker's children that the worker did not start:
an orphan. The reaper kills each orphan that is the ending job's, with all its
descendants, and reaps it (nothing else would: trio and subprocess wait only
for the pids they started).

Whose orphan is it, with jobs running side by side? A job's processes carry
``AIRUNNER_JOB_ID`` in their environment, and every process a job starts is
younger than the job. An orphan is left alone while it names a running job,
or names none and some running job is older than it; otherwise it is a stray,
and dies. So one job's end never kills another running job's processes; an
orphan that cleared its environment lives on until the jobs it might belong to
have ended too. The worker's own children (the job's command while trio waits
for it, watchdogs, git) are younger than their running job, and the command's
pid is held besides, so they are never killed or reaped here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import trio

log = logging.getLogger(__name__)

# The variable that names a job in its processes' environment.
JOB_ID_VARIABLE = "AIRUNNER_JOB_ID"
# How long one sweep keeps killing: long enough for SIGKILLed processes to go
# (and for their orphaned children to reach the worker), short enough that a
# process stuck in the kernel does not hold up the job's completion. What is
# left is taken by a later sweep.
SWEEP_SECONDS = 2.0
# Between rounds of one sweep: a killed process takes a moment to exit.
SWEEP_ROUND_SECONDS = 0.01
# Units of a process's start time in /proc/<pid>/stat.
_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class _Process:
    pid: int
    ppid: int
    # Its process group.
    group: int
    zombie: bool
    # Clock ticks since boot.
    started: int


@dataclass(eq=False)
class TrackedJob:
    """A running job as the reaper knows it: its age, its held pids, its process group."""

    reaper: OrphanReaper
    job_id: str
    started: int
    # The worker's own children of the job (its command): never killed or
    # reaped here, whatever environment they took.
    held: set[int] = field(default_factory=set)
    process_group: int | None = None

    async def ended(self) -> None:
        """Its command has ended and its group was sent SIGKILL: end what it left."""
        await self.reaper.sweep(self)


class OrphanReaper:
    """Finds, kills and reaps the processes that ended jobs leave behind.

    Disabled (``enabled=False``), it tracks jobs but never touches a process:
    for a worker running inside another program, whose other children it
    cannot tell from a job's.
    """

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self._me = os.getpid()
        self._since = _boot_ticks()
        # Children the process had before it ran jobs are none of theirs.
        self._before = (
            {p.pid for p in _processes().values() if p.ppid == self._me} if enabled else set()
        )
        # The running jobs, replaced (never changed in place) on the trio thread,
        # so that a sweep's thread reads a consistent set at any time.
        self._running: frozenset[TrackedJob] = frozenset()
        # Processes killed here, by pid, with their start times: once they are
        # zombies among the worker's children, they are reaped whoever they seem to be.
        self._killed: dict[int, int] = {}
        self._lock = trio.Lock()

    @contextlib.contextmanager
    def track(self, job_id: str) -> Iterator[TrackedJob]:
        """Count the job as running while inside; everything it starts is younger."""
        # One tick back: a process started in the same tick is taken for the job's.
        job = TrackedJob(self, job_id, _boot_ticks() - 1)
        self._running = self._running | {job}
        try:
            yield job
        finally:
            self._running = self._running - {job}

    async def sweep(self, ending: TrackedJob | None = None) -> None:
        """Kill and reap the strays: orphans no running job (but ``ending``) may own.

        With ``ending`` given, also waits (within the sweep's time) until its
        process group, already sent SIGKILL, is gone: its members' orphans
        reach the worker as they die.

        Cancellation:
            Shielded: a sweep runs to its end (at most ``SWEEP_SECONDS``).
        """
        if not self.enabled:
            return
        group = ending.process_group if ending is not None else None
        with trio.CancelScope(shield=True):
            async with self._lock:
                killed = await trio.to_thread.run_sync(self._sweep, ending, group)
        if killed:
            whose = f"job {ending.job_id}" if ending is not None else "jobs that ended"
            log.info("ended %d process(es) %s left running", killed, whose)

    def _sweep(self, ending: TrackedJob | None, group: int | None) -> int:
        deadline = time.monotonic() + SWEEP_SECONDS
        killed = 0
        while True:
            processes = _processes()
            # The jobs running now, read after the scan: a job that started since
            # the sweep began owns what it started, and each of its processes
            # in the scan was started after the job was counted.
            others = [job for job in self._running if job is not ending]
            held = set().union(*(job.held for job in self._running), ending.held if ending else ())
            self._killed = {
                pid: started
                for pid, started in self._killed.items()
                if pid in processes and processes[pid].started == started
            }
            strays = [
                p
                for p in processes.values()
                if p.ppid == self._me and p.pid not in held and self._stray(p, others, group)
            ]
            for stray in strays:
                if not stray.zombie:
                    killed += self._kill_tree(stray, processes)
                with contextlib.suppress(ChildProcessError):
                    if os.waitpid(stray.pid, os.WNOHANG)[0] == stray.pid:
                        self._killed.pop(stray.pid, None)
            if not strays and not _group_alive(group):
                return killed
            if time.monotonic() > deadline:
                log.warning("some processes of ended jobs are still exiting; reaping them later")
                return killed
            time.sleep(SWEEP_ROUND_SECONDS)

    def _stray(self, process: _Process, others: list[TrackedJob], group: int | None) -> bool:
        if self._killed.get(process.pid) == process.started:
            return True
        if process.pid in self._before or process.started < self._since:
            return False
        if group is not None and process.group == group:
            # Of the ending job's group (its members that outlived their parent,
            # zombies included, whatever their environment): its own.
            return True
        owner = None if process.zombie else _job_named_by(process.pid)
        for job in others:
            if owner is not None:
                if owner == job.job_id:
                    return False
            elif job.started <= process.started:
                return False
        return True

    def _kill_tree(self, root: _Process, processes: dict[int, _Process]) -> int:
        """SIGKILL ``root`` and its descendants; returns how many were signalled."""
        children: dict[int, list[_Process]] = {}
        for p in processes.values():
            children.setdefault(p.ppid, []).append(p)
        signalled = 0
        stack = [root]
        while stack:
            process = stack.pop()
            if _kill(process):
                # Each counted once, though signalled again while it is exiting.
                signalled += process.pid not in self._killed
                self._killed[process.pid] = process.started
            stack.extend(children.get(process.pid, ()))
        return signalled


def _kill(process: _Process) -> bool:
    """SIGKILL ``process`` if its pid still names it (not a newer process given the
    same pid since the scan: the pidfd pins the process the check looks at)."""
    try:
        pidfd = os.pidfd_open(process.pid)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        now = _process(process.pid)
        if now is None or now.started != process.started or now.zombie:
            return False
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        return True
    except (ProcessLookupError, PermissionError):
        return False
    finally:
        os.close(pidfd)


def _group_alive(group: int | None) -> bool:
    if group is None:
        return False
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _boot_ticks() -> int:
    # The clock process start times in /proc count on (Linux only).
    clock = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)
    return int(time.clock_gettime(clock) * _TICKS_PER_SECOND)


def _processes() -> dict[int, _Process]:
    found = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (process := _process(int(name))) is not None:
            found[process.pid] = process
    return found


def _process(pid: int) -> _Process | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name, in parentheses, may hold spaces and parentheses itself.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return _Process(
        pid=pid,
        ppid=int(fields[1]),
        group=int(fields[2]),
        zombie=fields[0] == b"Z",
        started=int(fields[19]),
    )


def _job_named_by(pid: int) -> str | None:
    """The job a process's environment names, if it can be read and names one."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read()
    except OSError:
        return None
    prefix = JOB_ID_VARIABLE.encode() + b"="
    for entry in environ.split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix) :].decode(errors="replace")
    return None
