"""Running a job's command in a pipe or a pseudo-terminal, in its own process group."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from airunner.api.job.v1.job_pb import StreamType

from ._isolation import JobUser
from ._orphans import JOB_ID_VARIABLE, TrackedJob

# Bytes read from the process per receive: large enough for heavy output,
# and below the 200 KiB limit of one output item (two fill a 256 KiB batch).
READ_CHUNK_BYTES = 128 * 1024
# What a job's output pipes hold (Linux's default is 64 KiB, and Linux's limit
# for an unprivileged process is 1 MiB): dense output then reaches the worker
# in reads of READ_CHUNK_BYTES, not of 64 KiB, each one less trip through the
# batcher. A pipe the system will not grow keeps its size.
PIPE_BYTES = 1024 * 1024
# Time a process group gets between SIGTERM and SIGKILL.
KILL_GRACE_SECONDS = 10.0
# How long output may keep flowing after the command exited (from children it
# left behind) before they are stopped.
LINGER_SECONDS = 2.0
# The terminal a PTY job sees: the classic size, in rows and columns.
PTY_ROWS, PTY_COLUMNS = 24, 80


@dataclass(frozen=True)
class OutputChunk:
    data: bytes
    stream: StreamType
    # Unix nanoseconds when it was read.
    at_ns: int


@dataclass(frozen=True)
class ProcessOutcome:
    pid: int
    # The exit status, or 128 + the signal number when a signal ended it.
    exit_code: int
    timed_out: bool
    # ``stop`` was set while it ran: its group was stopped on request.
    stopped: bool
    started_at_ns: int
    duration_seconds: float


class SpawnError(Exception):
    """The command could not be started; the message says why."""


async def run_command(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    pty: bool,
    time_limit: float | None,
    output: trio.MemorySendChannel[OutputChunk],
    on_start: Callable[[int, int], Awaitable[None]],
    kill_grace: float = KILL_GRACE_SECONDS,
    stop: trio.Event | None = None,
    stop_grace: float = KILL_GRACE_SECONDS,
    user: JobUser | None = None,
    tracked: TrackedJob | None = None,
) -> ProcessOutcome:
    """Run ``argv`` to its end, sending its output to ``output`` (closed on return).

    The command runs in a new session, so that ``time_limit`` or a cancellation ends
    its whole process group: SIGTERM, then SIGKILL after ``kill_grace``. Setting
    ``stop`` ends it the same way, with ``stop_grace``.
    ``on_start(pid, started_at_ns)`` runs once the process exists. With ``user``
    it runs as that user, with that user's groups. With ``tracked``, what the job
    left running outside its group is ended too when it ends (``OrphanReaper``),
    and its watchdog also kills the processes that name the job.

    Raises:
        SpawnError: the command does not exist or cannot be executed.

    Cancellation:
        Stops the process group (shielded), then re-raises.
    """
    async with output:
        # The watchdog comes first, so that no moment passes in which the job
        # runs and nothing would kill it if the worker died; it learns the
        # job's process group through a pipe once the process exists.
        group_read, group_write = os.pipe()
        try:
            watchdog = await _start_watchdog(group_read, tracked.job_id if tracked else "")
        except BaseException:
            os.close(group_write)
            raise
        finally:
            os.close(group_read)
        try:
            process, readers = await _spawn(argv, cwd, env, pty, user)
        except BaseException:
            os.close(group_write)
            watchdog.kill()
            with trio.CancelScope(shield=True):
                await watchdog.wait()
            raise
        os.write(group_write, f"{process.pid}\n".encode())
        os.close(group_write)
        if tracked is not None:
            tracked.held.add(process.pid)
            tracked.process_group = process.pid
        try:
            return await _supervise(
                process,
                readers,
                output,
                time_limit,
                on_start,
                kill_grace,
                stop if stop is not None else trio.Event(),
                stop_grace,
            )
        finally:
            # What the job left running (a daemon, a sleeping child, children that
            # kept its output open) ends with it, on every path; then its guard;
            # then whatever of it had left the group.
            _signal_group(process.pid, signal.SIGKILL)
            watchdog.kill()
            with trio.CancelScope(shield=True):
                await watchdog.wait()
                if tracked is not None:
                    await tracked.ended()


async def _supervise(
    process: trio.Process,
    readers: list[tuple[trio.abc.ReceiveStream, StreamType]],
    output: trio.MemorySendChannel[OutputChunk],
    time_limit: float | None,
    on_start: Callable[[int, int], Awaitable[None]],
    kill_grace: float,
    stop: trio.Event,
    stop_grace: float,
) -> ProcessOutcome:
    started_at_ns = time.time_ns()
    started = time.monotonic()
    timed_out = stopped = False
    readers_done = trio.Event()

    async def read_all() -> None:
        async with trio.open_nursery() as pumps:
            for stream, kind in readers:
                pumps.start_soon(_pump, stream, kind, output.clone())
        readers_done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_all)
        try:
            await on_start(process.pid, started_at_ns)
            with trio.move_on_after(time_limit or float("inf")) as timer:
                async with trio.open_nursery() as waiting:
                    waiting.start_soon(_cancel_when_set, stop, timer)
                    await process.wait()
                    waiting.cancel_scope.cancel()
            if timer.cancelled_caught:
                stopped = stop.is_set()
                timed_out = not stopped
                await _stop_group(process, stop_grace if stopped else kill_grace)
        except BaseException:
            with trio.CancelScope(shield=True):
                await _stop_group(process, kill_grace)
            raise
        # Children left behind keep the output open: give them a moment,
        # then end them too.
        with trio.move_on_after(LINGER_SECONDS) as linger:
            await readers_done.wait()
        if linger.cancelled_caught:
            _signal_group(process.pid, signal.SIGKILL)
            nursery.cancel_scope.cancel()
    duration = time.monotonic() - started
    code = process.returncode if process.returncode is not None else -signal.SIGKILL
    return ProcessOutcome(
        pid=process.pid,
        exit_code=128 - code if code < 0 else code,
        timed_out=timed_out,
        stopped=stopped,
        started_at_ns=started_at_ns,
        duration_seconds=duration,
    )


async def _cancel_when_set(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


async def _spawn(
    argv: Sequence[str], cwd: Path, env: Mapping[str, str], pty: bool, user: JobUser | None
) -> tuple[trio.Process, list[tuple[trio.abc.ReceiveStream, StreamType]]]:
    # subprocess sets the groups, then the group, then the user, in the child
    # before it runs the command (and before _take_terminal); None keeps the worker's.
    uid, gid, groups = (None, None, None) if user is None else (user.uid, user.gid, user.groups)
    try:
        if not pty:
            process = await trio.lowlevel.open_process(
                list(argv),
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                user=uid,
                group=gid,
                extra_groups=groups,
            )
            assert process.stdout is not None
            assert process.stderr is not None
            for pipe in (process.stdout, process.stderr):
                if isinstance(pipe, trio.lowlevel.FdStream):
                    with contextlib.suppress(OSError):
                        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
            return process, [
                (process.stdout, StreamType.STDOUT),
                (process.stderr, StreamType.STDERR),
            ]
        parent, child = os.openpty()
        try:
            fcntl.ioctl(
                child, termios.TIOCSWINSZ, struct.pack("HHHH", PTY_ROWS, PTY_COLUMNS, 0, 0)
            )
            if user is not None:
                # As login does: the job may open its terminal again (/dev/tty).
                os.fchown(child, user.uid, -1)
            process = await trio.lowlevel.open_process(
                list(argv),
                cwd=cwd,
                env=dict(env),
                stdin=child,
                stdout=child,
                stderr=child,
                start_new_session=True,
                preexec_fn=_take_terminal,
                user=uid,
                group=gid,
                extra_groups=groups,
            )
        except BaseException:
            os.close(parent)
            raise
        finally:
            os.close(child)
        return process, [(trio.lowlevel.FdStream(parent), StreamType.STDOUT)]
    except FileNotFoundError:
        raise SpawnError(_not_found(argv[0], cwd)) from None
    except PermissionError:
        raise SpawnError(f"command is not executable: {argv[0]}") from None
    except OSError as e:
        raise SpawnError(f"cannot start {argv[0]}: {e.strerror or e}") from None
    except ValueError as e:
        # A NUL byte in an argument or the environment, say.
        raise SpawnError(f"cannot start {argv[0]!r}: {e}") from None


def _not_found(command: str, cwd: Path) -> str:
    """Why ``command`` was not found, with what the job's author likely meant."""
    message = f"command not found: {command}"
    if " " in command.strip():
        first = command.split()[0]
        return (
            f"{message} (the command is one program name; put its arguments in args, "
            f"or submit with -- {first} ARG...)"
        )
    if "/" not in command and (cwd / command).is_file():
        return f"{message} (a file {command} is in the working directory: use ./{command})"
    return message


# Only this process holds the write end of this pipe; the kernel closes it when
# the process dies, however it dies, and every watchdog reading the other end
# wakes up.
_lifeline: tuple[int, int] | None = None


# The watchdog: it reads the job's process group from its stdin (nothing, if
# the job never started), then waits for the worker to be gone, reading the
# lifeline it was given as stderr (sh redirects only descriptors 0 to 9, so
# neither pipe is passed under its own number); then it kills the job's
# process group; then,
# a few times over (to catch a process forked meanwhile), every process whose
# environment names the job: those that left the group. One that cleared its
# environment too outlives its worker.
_WATCHDOG = f"""
group=
read group
exec 0<&2 2>/dev/null
read _
[ -z "$group" ] || kill -s KILL -- "-$group"
[ -n "$1" ] || exit 0
for _ in 1 2 3; do
    # Not grep's status: a process that ends while grep reads makes it 2.
    found=$(grep -lsxzF -e "{JOB_ID_VARIABLE}=$1" /proc/[0-9]*/environ)
    [ -n "$found" ] || exit 0
    for f in $found; do p=${{f#/proc/}}; kill -s KILL "${{p%/environ}}"; done
done
"""


async def _start_watchdog(group_pipe: int, job_id: str) -> trio.Process:
    """A process that kills the job's processes if the worker dies first.

    Why not a parent-death signal: trio forks from a worker thread, and Linux
    sends that signal when the forking *thread* ends (trio's idle threads end
    within seconds), and only to the direct child, not to its children.
    """
    global _lifeline
    if _lifeline is None:
        # Both ends close on exec: no job inherits either.
        _lifeline = os.pipe()
    return await trio.lowlevel.open_process(
        ["sh", "-c", _WATCHDOG, "airunner-watchdog", job_id],
        stdin=group_pipe,
        stdout=subprocess.DEVNULL,
        stderr=_lifeline[0],
        # Nothing of the worker's environment: a job could read it in the
        # watchdog's /proc/<pid>/environ.
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        # Out of the job's group, and of the worker's: a Ctrl-C meant for the
        # worker does not reach it.
        start_new_session=True,
    )


def _take_terminal() -> None:
    # Runs in the child after setsid(): the terminal on stdin becomes its
    # controlling terminal, as in a login shell.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


async def _pump(
    stream: trio.abc.ReceiveStream,
    kind: StreamType,
    output: trio.MemorySendChannel[OutputChunk],
) -> None:
    async with output, stream:
        while True:
            try:
                data = await stream.receive_some(READ_CHUNK_BYTES)
            except OSError as e:
                # A terminal whose last writer closed answers EIO: its end of file.
                if e.errno == errno.EIO:
                    return
                raise
            except trio.BrokenResourceError:
                return
            if not data:
                return
            await output.send(OutputChunk(bytes(data), kind, time.time_ns()))


async def _stop_group(process: trio.Process, grace: float) -> None:
    _signal_group(process.pid, signal.SIGTERM)
    with trio.move_on_after(grace):
        await process.wait()
        return
    _signal_group(process.pid, signal.SIGKILL)
    await process.wait()


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)
