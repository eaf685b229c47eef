"""What a job cannot do to its worker, with real workers, real jobs and real processes:
outlive itself (even out of its session), read the worker's secrets, act as the worker's user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from airunner.api.job.v1.job_pb import JobParams
from tests.helpers import clean_env, eventually, process_ended, request_id

from .conftest import run_server
from .test_jobs_run import Cli

pytestmark = pytest.mark.e2e

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="switches to another user: needs root (CI runs as root)"
)
NOBODY = pwd.getpwnam("nobody")
SECRET = "secret-token-4242"
AWS_SECRET = "aws-secret-4242"


@pytest.fixture
async def cli(tmp_path: Path) -> AsyncIterator[Cli]:
    async with run_server(poll_window=5) as running:
        yield Cli(running, tmp_path / "work")


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    """A git repository (of root's) holding ``version``."""
    path = tmp_path / "repo"
    path.mkdir()
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", "-C", str(path)]
    subprocess.run([*git, "init", "--quiet"], check=True)
    (path / "version").write_text("one\n")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "--quiet", "-m", "one"], check=True)
    return path


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory outside the (root-only) pytest tree that another user may use."""
    path = Path(tempfile.mkdtemp(prefix="airunner-isolation-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _sh(script: str, **fields: object) -> JobParams:
    return JobParams(command="sh", args=["-c", script], **fields)  # type: ignore[arg-type]


def note(file: Path | str) -> str:
    """Shell: ``note PID`` writes a process's pid and start time to ``file``; ``noted PID``
    first waits for it to lead a session of its own (setsid), as the job must not end
    first (a PTY job's end hangs up its terminal, ending what is still in its session)."""
    return (
        f"note() {{ echo $1 $(cut -d' ' -f22 /proc/$1/stat) >> {file}; }};"
        " noted() { while [ \"$(cut -d' ' -f6 /proc/$1/stat)\" != $1 ]; do sleep 0.01; done;"
        " note $1; };"
    )


DETACHED = "sleep 300 >/dev/null 2>&1 </dev/null &"


class Tracked:
    """A process a job started, known by its pid and start time (pids are reused)."""

    def __init__(self, pid: int, started: str) -> None:
        self.pid = pid
        self.started = started

    def _started(self) -> str | None:
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return None
        return stat.rsplit(")", 1)[1].split()[19]

    def gone(self) -> bool:
        """Ended and reaped: not even a zombie is left."""
        return self._started() != self.started

    def running(self) -> bool:
        return not self.gone() and not process_ended(self.pid)


async def _noted(path: Path, count: int) -> list[Tracked]:
    await eventually(lambda: path.exists() and len(path.read_text().splitlines()) >= count)
    return _read_noted(path)


def _read_noted(path: Path) -> list[Tracked]:
    return [
        Tracked(int(pid), started)
        for pid, started in map(str.split, path.read_text().splitlines())
    ]


async def test_a_background_child_ends_with_its_job(cli: Cli, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    async with cli.worker():
        with trio.fail_after(30):
            done = await cli.run("submit", "--", "sh", "-c", note(pids) + f"{DETACHED} note $!")
        assert done.returncode == 0, done.stderr
        # Killed with its group, and reaped by the worker it was reparented to.
        [child] = await _noted(pids, 1)
        await eventually(child.gone)


# A child that leaves the job's session, keeping the job's environment or not;
# and a grandchild, after a double fork, that keeps the job's output open.
_DOUBLE_FORK = """
import os, sys, time
pid_file = sys.argv[1]
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        with open("/proc/self/stat") as f:
            started = f.read().rsplit(")", 1)[1].split()[19]
        with open(pid_file + ".tmp", "w") as f:
            f.write(f"{os.getpid()} {started}\\n")
        os.rename(pid_file + ".tmp", pid_file)
        os.execvp("sleep", ["sleep", "300"])
    os._exit(0)
os.wait()
while not os.path.exists(pid_file):
    time.sleep(0.01)
"""


@pytest.mark.parametrize("process_type", ["pipe", "pty"])
@pytest.mark.parametrize(
    "escape",
    [
        note("FILE") + f"setsid {DETACHED} noted $!",
        note("FILE") + f"env -i setsid {DETACHED} noted $!",
        f"{sys.executable} -c '{_DOUBLE_FORK}' FILE",
    ],
    ids=["setsid", "setsid-without-environment", "double-fork"],
)
async def test_a_process_that_left_the_jobs_session_ends_with_it(
    cli: Cli, tmp_path: Path, escape: str, process_type: str
) -> None:
    pids = tmp_path / "pids"
    async with cli.worker():
        with trio.fail_after(30):
            done = await cli.run(
                "submit",
                "--process-type",
                process_type,
                "--",
                "sh",
                "-c",
                escape.replace("FILE", str(pids)),
            )
        assert done.returncode == 0, done.stderr
        [escaped] = await _noted(pids, 1)
        await eventually(escaped.gone)


async def test_one_jobs_end_leaves_another_running_jobs_processes_alone(
    cli: Cli, tmp_path: Path
) -> None:
    store = cli.server.store
    mine, theirs, go = tmp_path / "first", tmp_path / "second", tmp_path / "go"
    # The first job's processes out of its session, one naming its job, one
    # naming none; they must live as long as it runs.
    first = await store.enqueue_job(
        request_id(),
        "default",
        _sh(
            note(mine) + f"setsid {DETACHED} noted $!; env -i setsid {DETACHED}"
            f" noted $!; while [ ! -e {go} ]; do sleep 0.05; done"
        ),
    )
    async with cli.worker("--concurrency", "2"):
        kept = await _noted(mine, 2)
        second = await store.enqueue_job(
            request_id(), "default", _sh(note(theirs) + f"setsid {DETACHED} noted $!")
        )
        with trio.fail_after(30):
            done = await cli.run("monitor", second.job_id)
        assert done.returncode == 0, done.stderr
        [ended] = await _noted(theirs, 1)
        await eventually(ended.gone)
        assert all(process.running() for process in kept)
        go.touch()
        with trio.fail_after(30):
            done = await cli.run("monitor", first.job_id)
        assert done.returncode == 0, done.stderr
        for process in kept:
            await eventually(process.gone)


async def test_a_killed_workers_escaped_processes_die_with_it(cli: Cli, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    await cli.server.store.enqueue_job(
        request_id(),
        "default",
        _sh(note(pids) + f"setsid {DETACHED} noted $!; sleep 300"),
    )
    async with cli.worker() as worker:
        [escaped] = await _noted(pids, 1)
        worker.send_signal(signal.SIGKILL)
    # Its watchdog kills it; whoever inherits it reaps it (or leaves a zombie).
    await eventually(lambda: process_ended(escaped.pid) or escaped.gone())


@pytest.mark.parametrize("process_type", ["pipe", "pty"])
async def test_a_job_inherits_no_open_file_of_the_worker(
    cli: Cli, tmp_path: Path, process_type: str
) -> None:
    async with cli.worker():
        with trio.fail_after(30):
            done = await cli.run(
                "submit", "--process-type", process_type, "--", "sh", "-c", "ls /proc/$$/fd"
            )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [b"0", b"1", b"2"]


@needs_root
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
async def test_a_job_of_the_workers_own_user_cannot_read_its_secrets(cli: Cli) -> None:
    """The worker and its job as one user, without privileges: uid 0 with no
    capabilities left (setpriv), for the venv's Python may be where no other
    user can reach it. To the kernel that is the same case as any other user:
    same uid, and no CAP_SYS_PTRACE to read a non-dumpable process's memory."""
    env = clean_env(AIRUNNER_TOKEN=SECRET, AWS_SECRET_ACCESS_KEY=AWS_SECRET)
    no_privileges = ["setpriv", "--bounding-set=-all", "--inh-caps=-all"]
    async with cli.worker(env=env, wrapper=no_privileges) as worker:
        pid = worker.process.pid
        script = (
            "id -u; grep CapEff /proc/self/status;"
            f" tr '\\0' '\\n' < /proc/{pid}/environ; head -c 1 /proc/{pid}/mem;"
            f" readlink -v /proc/{pid}/fd/2;"
            f" grep -ls -e {SECRET} -e {AWS_SECRET} /proc/[0-9]*/environ; echo end"
        )
        with trio.fail_after(30):
            done = await cli.run("submit", "--", "sh", "-c", script)
    output = done.stdout + done.stderr
    assert done.stdout.split() == [b"0", b"CapEff:", b"0000000000000000", b"end"], output
    assert SECRET.encode() not in output
    assert AWS_SECRET.encode() not in output
    assert output.count(b"Permission denied") == 3, output


@needs_root
@pytest.mark.parametrize("process_type", ["pipe", "pty"])
async def test_a_job_user_cannot_read_the_workers_token_file_or_environment(
    cli: Cli, shared_dir: Path, repository: Path, process_type: str
) -> None:
    token_file = shared_dir / "token"
    token_file.write_text(SECRET + "\n")
    token_file.chmod(0o600)
    env = clean_env(AWS_SECRET_ACCESS_KEY=AWS_SECRET)
    async with cli.worker("--job-user", "nobody", "--token-file", str(token_file), env=env) as w:
        pid = w.process.pid
        script = (
            'id -u; id -g; echo "$HOME $USER $LOGNAME";'
            f" cat {token_file}; tr '\\0' '\\n' < /proc/{pid}/environ;"
            f" grep -ls -e {SECRET} -e {AWS_SECRET} /proc/[0-9]*/environ;"
            # Its checkout is its own: it may write there.
            " cat version > copy && cat copy;"
            # A terminal it can open again, as a login session can.
            " if [ -t 1 ]; then : < /dev/tty && echo tty; fi; echo end"
        )
        with trio.fail_after(30):
            done = await cli.run(
                "submit", str(repository), "--process-type", process_type, "--", "sh", "-c", script
            )
    output = done.stdout + done.stderr
    uid, gid = str(NOBODY.pw_uid).encode(), str(NOBODY.pw_gid).encode()
    home = f"{NOBODY.pw_dir} {NOBODY.pw_name} {NOBODY.pw_name}".encode()
    tty = [b"tty"] if process_type == "pty" else []
    printed = [line for line in output.splitlines() if b"Permission denied" not in line]
    assert [line.strip() for line in printed if b"airunner:" not in line] == [
        uid,
        gid,
        home,
        b"one",
        *tty,
        b"end",
    ], output
    assert SECRET.encode() not in output
    assert AWS_SECRET.encode() not in output
    assert output.count(b"Permission denied") == 2, output
