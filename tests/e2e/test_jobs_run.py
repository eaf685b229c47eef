"""Real jobs end to end: a server, worker processes, the CLI, git repositories in a temp dir."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from airunner.api.job.v1.job_pb import EventType, JobParams, JobState
from airunner.client import AirunnerClient
from airunner.store import EventQuery, JobStore, MemoryJobStore
from airunner.worker import KILLED_REPORT_SECONDS, Worker, WorkerSettings
from tests.helpers import clean_env, eventually, process_ended, read_until, request_id, tool

from .conftest import RunningServer, run_server

pytestmark = pytest.mark.e2e


@dataclass
class Repo:
    path: Path
    first: str
    feature: str
    main: str


def _git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.email=tests@example.com", "-c", "user.name=tests", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    """main: one -> three; feature (from one): two."""
    path = tmp_path_factory.mktemp("repo")
    _git(path, "init", "--quiet", "--initial-branch=main")
    (path / "version").write_text("one\n")
    (path / "sub").mkdir()
    (path / "sub" / "where").write_text("in sub\n")
    _git(path, "add", ".")
    _git(path, "commit", "--quiet", "-m", "one")
    first = _git(path, "rev-parse", "HEAD")
    _git(path, "checkout", "--quiet", "-b", "feature")
    (path / "version").write_text("two\n")
    _git(path, "commit", "--quiet", "-am", "two")
    feature = _git(path, "rev-parse", "HEAD")
    _git(path, "checkout", "--quiet", "main")
    (path / "version").write_text("three\n")
    _git(path, "commit", "--quiet", "-am", "three")
    return Repo(path, first, feature, _git(path, "rev-parse", "HEAD"))


@dataclass
class Cli:
    server: RunningServer
    work_dir: Path

    async def run(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        return await trio.run_process(
            [tool("airunner-cli"), *args, "--server", self.server.url]
            if "--" not in args
            else [tool("airunner-cli"), *_server_before_dashes(args, self.server.url)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env or clean_env(),
        )

    @asynccontextmanager
    async def worker(
        self, *args: str, env: dict[str, str] | None = None, wrapper: Sequence[str] = ()
    ) -> AsyncIterator[WorkerProcess]:
        """A worker process, started through ``wrapper`` (``setpriv ...``) if given."""
        process = await trio.lowlevel.open_process(
            [
                *wrapper,
                tool("airunner-cli"),
                "worker",
                "--server",
                self.server.url,
                "--work-dir",
                str(self.work_dir),
                *args,
            ],
            env=env or clean_env(),
            stderr=subprocess.PIPE,
        )
        worker = WorkerProcess(process)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(worker.read_log)
                yield worker
                nursery.cancel_scope.cancel()
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGKILL)
            await process.wait()


@dataclass
class WorkerProcess:
    """A worker process and what it logged so far."""

    process: trio.Process
    log: bytes = b""

    def send_signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    async def wait(self) -> int:
        return await self.process.wait()

    async def read_log(self) -> None:
        assert self.process.stderr is not None
        while chunk := await self.process.stderr.receive_some():
            self.log += chunk

    async def logged(self, text: str) -> None:
        await eventually(lambda: text.encode() in self.log)


def _server_before_dashes(args: tuple[str, ...], url: str) -> list[str]:
    split = args.index("--")
    return [*args[:split], "--server", url, *args[split:]]


@pytest.fixture
async def cli(tmp_path: Path) -> AsyncIterator[Cli]:
    async with run_server(poll_window=5) as running:
        yield Cli(running, tmp_path / "work")


@pytest.fixture
async def worker(cli: Cli) -> AsyncIterator[WorkerProcess]:
    async with cli.worker() as process:
        yield process


async def test_pipe_job_output_exit_code_and_stream_separation(
    cli: Cli, worker: WorkerProcess, repo: Repo
) -> None:
    done = await cli.run(
        "submit", str(repo.path), "--", "sh", "-c", "cat version; echo oops >&2; exit 3"
    )
    assert done.returncode == 3, done.stderr
    assert done.stdout == b"three\n"
    assert b"oops\n" in done.stderr
    assert b"process exited with code 3" in done.stderr


async def test_a_jobs_output_pipes_hold_a_mib(cli: Cli, worker: WorkerProcess, repo: Repo) -> None:
    # Dense output waits in the pipe, not in the job, while the worker is busy.
    size = "import fcntl; print(fcntl.fcntl({}, fcntl.F_GETPIPE_SZ))"
    script = f"{sys.executable} -c '{size.format(1)}'; {sys.executable} -c '{size.format(2)}' >&2"
    done = await cli.run("submit", str(repo.path), "--", "sh", "-c", script)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"1048576\n"
    assert b"1048576\n" in done.stderr


async def test_pty_job_sees_a_terminal_and_keeps_colours(
    cli: Cli, worker: WorkerProcess, repo: Repo
) -> None:
    script = 'test -t 1 && echo tty; printf "\\033[31mred\\033[0m\\n"; echo err >&2'
    done = await cli.run(
        "submit", str(repo.path), "--process-type", "pty", "--", "sh", "-c", script
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"tty\r\n\x1b[31mred\x1b[0m\r\nerr\r\n"


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--branch", "feature"], b"two\n"),
        (["--commit", "FIRST"], b"one\n"),
        (["--branch", "feature", "--commit", "FEATURE"], b"two\n"),
        (["--working-directory", "sub"], b"in sub\n"),
    ],
)
async def test_checkout_of_branch_commit_and_directory(
    cli: Cli, worker: WorkerProcess, repo: Repo, flags: list[str], expected: bytes
) -> None:
    flags = [{"FIRST": repo.first, "FEATURE": repo.feature}.get(f, f) for f in flags]
    command = "cat where" if "--working-directory" in flags else "cat version"
    done = await cli.run("submit", str(repo.path), *flags, "--", "sh", "-c", command)
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected


async def test_timeout_stops_the_process_group(
    cli: Cli, worker: WorkerProcess, tmp_path: Path
) -> None:
    marker = tmp_path / "child-survived"
    child_pid = tmp_path / "child.pid"
    script = f"(sleep 3; touch {marker}) & echo $! > {child_pid}; sleep 60"
    with trio.fail_after(30):
        done = await cli.run("submit", "--timeout", "1", "--", "sh", "-c", script)
    assert done.returncode != 0
    assert b"timed out after 1 s" in done.stderr
    # Until the background child has ended: at once if the timeout stopped it,
    # else once it touched the marker.
    child = int(child_pid.read_text())
    await eventually(lambda: process_ended(child))
    assert not marker.exists(), "a child of the timed-out job kept running"


@pytest.mark.parametrize(
    ("repository", "message"),
    [
        ("--upload-pack=touch MARKER", "looks like an option"),
        ("ext::sh -c touch% MARKER", "remote helper"),
        ("/no/such/repository", "checkout failed: git clone failed"),
    ],
)
async def test_bad_repository_fails_the_job_clearly(
    cli: Cli, worker: WorkerProcess, repository: str, message: str, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    repository = repository.replace("MARKER", str(marker))
    store = cli.server.store
    job = await store.enqueue_job(
        f"bad-{repository}", "default", _params(repository=repository, command="true")
    )
    done = await cli.run("monitor", job.job_id)
    assert done.returncode == 1
    assert message.encode() in done.stderr
    assert (await store.get_job(job.job_id)).state == JobState.FAILED
    assert not marker.exists()


async def test_a_commit_that_does_not_exist_is_named(
    cli: Cli, worker: WorkerProcess, repo: Repo
) -> None:
    missing = "0123456789abcdef0123456789abcdef01234567"
    done = await cli.run("submit", str(repo.path), "--commit", missing, "--", "true")
    assert done.returncode == 1
    assert f"commit '{missing}' is not in {repo.path}".encode() in done.stderr


async def test_working_directory_may_not_escape(
    cli: Cli, worker: WorkerProcess, repo: Repo
) -> None:
    done = await cli.run("submit", str(repo.path), "--working-directory", "../..", "--", "pwd")
    assert done.returncode == 1
    assert b"leaves the checkout" in done.stderr


async def test_a_working_directory_that_is_a_symlink_loop_fails_the_job_at_once(
    cli: Cli, worker: WorkerProcess, tmp_path: Path
) -> None:
    looped = tmp_path / "looped"
    looped.mkdir()
    _git(looped, "init", "--quiet")
    (looped / "loop").symlink_to("loop")
    _git(looped, "add", ".")
    _git(looped, "commit", "--quiet", "-m", "a loop")
    with trio.fail_after(30):
        done = await cli.run("submit", str(looped), "--working-directory", "loop", "--", "pwd")
    assert done.returncode == 1
    assert b"working_directory 'loop'" in done.stderr
    page = await cli.server.store.list_jobs("", JobState.UNSPECIFIED, 1, 10)
    assert [job.state for job in page.jobs] == [JobState.FAILED]


async def test_missing_command_fails_the_job(cli: Cli, worker: WorkerProcess) -> None:
    done = await cli.run("submit", "--", "no-such-command-here")
    assert done.returncode == 1
    assert b"command not found: no-such-command-here" in done.stderr


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["--command", "ls -la"], b"put its arguments in args, or submit with -- ls ARG..."),
        (["--", "version"], b"a file version is in the working directory: use ./version"),
    ],
)
async def test_a_command_not_found_says_what_was_likely_meant(
    cli: Cli, worker: WorkerProcess, repo: Repo, args: list[str], hint: bytes
) -> None:
    done = await cli.run("submit", str(repo.path), *args)
    assert done.returncode == 1
    assert b"command not found" in done.stderr
    assert hint in done.stderr


async def test_monitor_replay_equals_live_output_byte_for_byte(
    cli: Cli, worker: WorkerProcess
) -> None:
    # 20 MB holding every byte value, in a pattern that differs along the way.
    program = (
        "import sys\n"
        "out = sys.stdout.buffer\n"
        "for i in range(20 * 1024):\n"
        "    out.write(bytes((i + j) % 256 for j in range(1024)))\n"
    )
    expected = hashlib.sha256(
        b"".join(bytes((i + j) % 256 for j in range(1024)) for i in range(20 * 1024))
    ).hexdigest()
    live = await cli.run("submit", "--", sys.executable, "-c", program)
    assert live.returncode == 0, live.stderr[-2000:]
    assert len(live.stdout) == 20 * 1024 * 1024
    assert hashlib.sha256(live.stdout).hexdigest() == expected
    job_id = live.stderr.split(b"job ", 1)[1].split(b" ", 1)[0].decode()
    replay = await cli.run("monitor", job_id)
    assert replay.returncode == 0
    assert hashlib.sha256(replay.stdout).hexdigest() == expected
    await _assert_batches_within_bounds(cli.server.store, job_id)


async def _assert_batches_within_bounds(store: JobStore, job_id: str) -> None:
    job = await store.get_job(job_id)
    assert job.execution_config is not None
    assert job.execution_config.batching is not None
    limit = job.execution_config.batching.max_batch_bytes
    next_sequence = 1
    async with store.subscribe_events(job_id, EventQuery()) as events:
        while (event := await events.receive()) is not None:
            assert event.sequence == next_sequence
            data = event.event_data
            if event.event_type == EventType.OUTPUT_BATCH:
                assert data is not None
                batch = data.value
                sizes = [len(item.output) for item in batch.outputs]  # type: ignore[union-attr]
                assert sum(sizes) <= limit
                assert max(sizes) <= 200 * 1024
                assert batch.start_sequence == event.sequence  # type: ignore[union-attr]
                assert batch.end_sequence == event.sequence + len(sizes) - 1  # type: ignore[union-attr]
                next_sequence = batch.end_sequence + 1  # type: ignore[union-attr]
            else:
                next_sequence = event.sequence + 1


async def test_trickling_output_reaches_a_watcher_promptly(
    cli: Cli, worker: WorkerProcess
) -> None:
    store = cli.server.store
    job = await store.enqueue_job(
        "trickle", "default", _params(command="sh", args=["-c", "echo first; sleep 3; echo last"])
    )
    delays = []
    async with store.subscribe_events(job.job_id, EventQuery()) as events:
        with trio.fail_after(20):
            while (event := await events.receive()) is not None:
                if event.event_type == EventType.OUTPUT_BATCH:
                    assert event.event_data is not None
                    read_ms = event.event_data.value.first_timestamp_ms  # type: ignore[union-attr]
                    delays.append(time.time() - read_ms / 1000)
    # Each line reached the watcher about 100 ms after the worker read it,
    # not after a long batching window or at the end of the job.
    assert len(delays) == 2
    assert max(delays) < 0.6, delays


async def test_long_job_keeps_its_delivery_with_heartbeats(cli: Cli) -> None:
    async with cli.worker("--visibility-timeout", "3"):
        done = await cli.run("submit", "--", "sh", "-c", "sleep 7; echo done")
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"done\n"


async def test_killed_worker_job_runs_again_elsewhere_and_completes_once(
    cli: Cli, tmp_path: Path
) -> None:
    store = cli.server.store
    pid_file = tmp_path / "first-run.pid"
    script = f"if [ -e {pid_file} ]; then echo second run; else echo $$ > {pid_file}; sleep 60; fi"
    job = await store.enqueue_job("crash", "default", _params(command="sh", args=["-c", script]))
    try:
        async with cli.worker("--visibility-timeout", "3") as first:
            await eventually(pid_file.exists)
            first.send_signal(signal.SIGKILL)
        async with cli.worker("--visibility-timeout", "3"):
            done = await cli.run("monitor", job.job_id)
    finally:
        _kill(pid_file)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(b"second run") == 1
    # The log shows two runs, the first ended where its worker was lost (its
    # process start is there unless the worker died before it sent it).
    said = done.stderr.decode()
    second = said.index("attempt 2 of the job:")
    assert said.index("run 1 lost its worker") < second < said.rindex("process started")
    assert said.count("attempt 2 of the job:") == 1
    assert (await store.get_job(job.job_id)).state == JobState.COMPLETED
    page = await store.list_jobs("", JobState.UNSPECIFIED, 1, 50)
    assert [j.job_id for j in page.jobs] == [job.job_id]


async def test_sigterm_lets_the_running_job_finish_and_takes_no_new_one(
    cli: Cli, tmp_path: Path
) -> None:
    store = cli.server.store
    started = tmp_path / "started"
    job = await store.enqueue_job(
        "drain",
        "default",
        _params(command="sh", args=["-c", f"touch {started}; sleep 2; echo ok"]),
    )
    async with cli.worker() as worker:
        await eventually(started.exists)
        worker.send_signal(signal.SIGTERM)
        later = await store.enqueue_job("after", "default", _params(command="true"))
        with trio.fail_after(20):
            assert await worker.wait() == 0
    assert (await store.get_job(job.job_id)).state == JobState.COMPLETED
    assert (await store.get_job(later.job_id)).state == JobState.SCHEDULED
    workspaces = list((tmp_path / "work").iterdir()) if (tmp_path / "work").exists() else []
    assert workspaces == []


async def test_second_signal_stops_the_running_job_and_fails_it(cli: Cli, tmp_path: Path) -> None:
    store = cli.server.store
    started = tmp_path / "started"
    job = await store.enqueue_job(
        "forced", "default", _params(command="sh", args=["-c", f"touch {started}; sleep 60"])
    )
    async with cli.worker() as worker:
        await eventually(started.exists)
        worker.send_signal(signal.SIGTERM)
        # Two signals sent at once could arrive as one.
        await worker.logged("taking no new jobs")
        worker.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            assert await worker.wait() == 0
    assert (await store.get_job(job.job_id)).state == JobState.FAILED
    done = await cli.run("monitor", job.job_id)
    assert b"the worker stopped before the job finished" in done.stderr


async def test_second_signal_with_the_server_gone_stops_the_worker_within_its_bound(
    tmp_path: Path,
) -> None:
    # The job's end cannot be reported: the worker gives up on it after
    # KILLED_REPORT_SECONDS rather than retrying its events and CompleteJob.
    from .test_cancel_and_secrets import naming
    from .test_commands import server_process

    work_dir = tmp_path / "work"
    async with server_process("--no-auth") as server:
        submitted = await trio.run_process(
            [
                tool("airunner-cli"),
                "submit",
                "--server",
                server.url,
                "--detach",
                "--",
                "sleep",
                "1000",
            ],
            capture_stdout=True,
            env=clean_env(),
        )
        job_id = submitted.stdout.decode().strip()
        process = await trio.lowlevel.open_process(
            [
                tool("airunner-cli"),
                "worker",
                "--server",
                server.url,
                "--work-dir",
                str(work_dir),
            ],
            env=clean_env(),
            stderr=subprocess.PIPE,
        )
        worker = WorkerProcess(process)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(worker.read_log)
                await eventually(lambda: bool(naming(job_id)))
                server.process.kill()
                await server.process.wait()
                worker.send_signal(signal.SIGTERM)
                await worker.logged("taking no new jobs")
                worker.send_signal(signal.SIGTERM)
                with trio.fail_after(KILLED_REPORT_SECONDS + 8):
                    assert await worker.wait() == 0
        finally:
            if process.returncode is None:
                process.kill()
            await process.wait()
    assert (
        f"job {job_id}: the server did not take the job's end within 10 s of it being stopped; "
        "giving up on it: its delivery runs out and it runs again on another worker "
        "(or fails as lost after its last attempt)"
    ).encode() in worker.log, worker.log.decode()
    assert naming(job_id) == []
    assert list(work_dir.iterdir()) == []


def _params(**fields: object):  # type: ignore[no-untyped-def]
    from airunner.api.job.v1.job_pb import JobParams

    return JobParams(**fields)  # type: ignore[arg-type]


def _kill(pid_file: Path) -> None:
    with suppress(OSError, ValueError):
        os.killpg(int(pid_file.read_text()), signal.SIGKILL)


async def test_worker_backs_off_while_the_server_is_down(tmp_path: Path) -> None:
    process = await trio.lowlevel.open_process(
        [
            tool("airunner-cli"),
            "worker",
            "--server",
            "http://127.0.0.1:9",
            "--work-dir",
            str(tmp_path),
        ],
        env=clean_env(),
        stderr=subprocess.PIPE,
    )
    log = await read_until(process.stderr, b"polling failed")
    assert process.stderr is not None
    # From the first failure on, for 4.5 s.
    with trio.move_on_after(4.5):
        while chunk := await process.stderr.receive_some():
            log += chunk
    process.send_signal(signal.SIGTERM)
    with trio.fail_after(10):
        assert await process.wait() == 0
    failures = log.count(b"polling failed")
    # Tries at about 0, 1 and 3 s: backing off, not spinning.
    assert 2 <= failures <= 4, log.decode()


async def test_worker_stops_a_job_it_lost_and_does_not_complete_it(
    cli: Cli, tmp_path: Path
) -> None:
    store = cli.server.store
    runs = tmp_path / "runs"
    script = f"echo run >> {runs}; sleep 6; echo finished"
    job = await store.enqueue_job("lost", "default", _params(command="sh", args=["-c", script]))
    async with cli.worker("--visibility-timeout", "3") as worker:
        await eventually(runs.exists)
        # A frozen worker misses its heartbeats; the delivery expires meanwhile.
        worker.send_signal(signal.SIGSTOP)
        await eventually(lambda: _state(store, job.job_id) == JobState.SCHEDULED)
        worker.send_signal(signal.SIGCONT)
        done = await cli.run("monitor", job.job_id)
    assert done.returncode == 0, done.stderr
    # The first run was stopped before it finished; only the second completed.
    assert done.stdout.count(b"finished") == 1
    assert runs.read_text().count("run") == 2
    assert (await store.get_job(job.job_id)).state == JobState.COMPLETED


async def test_drain_timeout_stops_running_jobs(cli: Cli, tmp_path: Path) -> None:
    store = cli.server.store
    started = tmp_path / "started"
    job = await store.enqueue_job(
        "slow", "default", _params(command="sh", args=["-c", f"touch {started}; sleep 60"])
    )
    async with cli.worker("--drain-timeout", "1") as worker:
        await eventually(started.exists)
        worker.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            assert await worker.wait() == 0
    assert (await store.get_job(job.job_id)).state == JobState.FAILED


def _state(store: JobStore, job_id: str) -> JobState:
    return store._jobs[job_id].state  # type: ignore[attr-defined, no-any-return]


async def test_concurrency_runs_jobs_side_by_side(cli: Cli, tmp_path: Path) -> None:
    store = cli.server.store
    # Each job waits for the other to start: they finish only if both run at once.
    first, second = tmp_path / "first", tmp_path / "second"
    jobs = [
        await store.enqueue_job(
            name,
            "default",
            _params(
                command="sh",
                args=[
                    "-c",
                    f"touch {mine}; for i in $(seq 100); do"
                    f" [ -e {other} ] && exit 0; sleep 0.1; done; exit 1",
                ],
            ),
        )
        for name, mine, other in (("a", first, second), ("b", second, first))
    ]
    async with cli.worker("--concurrency", "2"):
        for job in jobs:
            done = await cli.run("monitor", job.job_id)
            assert done.returncode == 0, done.stderr


async def test_worker_never_runs_more_than_its_concurrency(cli: Cli, tmp_path: Path) -> None:
    store = cli.server.store
    running = tmp_path / "running"
    running.mkdir()
    # Each job notes how many jobs run beside it, itself included.
    mine = f"{running}/$AIRUNNER_JOB_ID"
    script = f"touch {mine}; sleep 1; ls {running} | wc -l; rm {mine}"
    jobs = [
        await store.enqueue_job(f"many-{i}", "default", _params(command="sh", args=["-c", script]))
        for i in range(5)
    ]
    async with cli.worker("--concurrency", "2"):
        counts = []
        for job in jobs:
            done = await cli.run("monitor", job.job_id)
            assert done.returncode == 0, done.stderr
            counts.append(int(done.stdout))
    assert max(counts) <= 2


async def test_stopping_the_worker_cuts_a_hung_checkout_short(cli: Cli, tmp_path: Path) -> None:
    store = cli.server.store
    # A git server that accepts connections and never answers.
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    held: list[trio.SocketStream] = []

    async def hold(stream: trio.SocketStream) -> None:
        held.append(stream)
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, hold, listeners)
        job = await store.enqueue_job(
            "hung", "default", _params(repository=f"git://127.0.0.1:{port}/repo", command="true")
        )
        async with cli.worker() as worker:
            await eventually(lambda: bool(held))
            worker.send_signal(signal.SIGTERM)
            await worker.logged("taking no new jobs")
            worker.send_signal(signal.SIGTERM)
            with trio.fail_after(20):
                assert await worker.wait() == 0
        nursery.cancel_scope.cancel()
    assert (await store.get_job(job.job_id)).state == JobState.FAILED
    done = await cli.run("monitor", job.job_id)
    assert b"the worker stopped before the job started" in done.stderr


# Faults: a killed worker, many jobs at once, a cancelled worker.


def _sh(script: str, **fields: object) -> JobParams:
    return JobParams(command="sh", args=["-c", script], **fields)  # type: ignore[arg-type]


async def test_a_killed_workers_job_processes_die_with_it(cli: Cli, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    # The job's shell, and a child that would outlive it.
    script = f"sleep 300 & echo $! >> {pids}; echo $$ >> {pids}; wait"
    await cli.server.store.enqueue_job(request_id(), "default", _sh(script))
    async with cli.worker() as worker:
        await eventually(lambda: pids.exists() and len(pids.read_text().split()) == 2)
        worker.send_signal(signal.SIGKILL)
    for pid in map(int, pids.read_text().split()):
        await eventually(lambda pid=pid: process_ended(pid))  # type: ignore[misc]


async def test_many_running_jobs_keep_their_heartbeats(cli: Cli, tmp_path: Path) -> None:
    # More jobs than trio's default 40 threads, each holding an event stream,
    # with heartbeats every second: none may lose its delivery.
    jobs = 45
    store = cli.server.store
    ids = [
        (await store.enqueue_job(request_id(), "default", _sh("echo start; sleep 5"))).job_id
        for _ in range(jobs)
    ]
    async with cli.worker("--visibility-timeout", "3", "--concurrency", str(jobs)):
        with trio.fail_after(60):
            for job_id in ids:
                await eventually(lambda job_id=job_id: _final(store, job_id))  # type: ignore[misc]
    for job_id in ids:
        assert (await store.get_job(job_id)).state == JobState.COMPLETED
        async with store.subscribe_events(job_id, EventQuery()) as stream:
            types = []
            while (event := await stream.receive()) is not None:
                types.append(event.event_type)
        # One run, never lost.
        assert types.count(EventType.PROCESS_START) == 1, job_id
        assert EventType.PROCESS_ERROR not in types, job_id


def _final(store: JobStore, job_id: str) -> bool:
    return store._jobs[job_id].state in (JobState.COMPLETED, JobState.FAILED)  # type: ignore[attr-defined, no-any-return]


async def test_a_cancelled_worker_leaves_no_workspace(tmp_path: Path) -> None:
    started = tmp_path / "started"
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    async with run_server() as running:
        await running.store.enqueue_job(request_id(), "default", _sh(f"touch {started}; sleep 60"))
        async with AirunnerClient(running.url) as client:
            worker = Worker(client, WorkerSettings(work_dir=work_dir, kill_grace=1))
            with trio.fail_after(30):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(worker.run)
                    await eventually(started.exists)
                    assert list(work_dir.iterdir())
                    # Cancelled outright, as when the worker's run is torn down.
                    nursery.cancel_scope.cancel()
    assert list(work_dir.iterdir()) == []


async def test_a_frozen_workers_job_goes_to_another_within_seconds(
    cli: Cli, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    store = cli.server.store
    async with cli.worker() as frozen:
        # Until its poll waits in the server.
        await eventually(lambda: len(store._queues["default"].waiters) > 0)  # type: ignore[attr-defined]
        frozen.send_signal(signal.SIGSTOP)
        try:
            job = await store.enqueue_job(
                request_id(), "default", _sh(f"echo run >> {runs}; echo hi")
            )
            # Written into the frozen worker's open poll, which cannot take it up.
            await eventually(lambda: _state(store, job.job_id) == JobState.RUNNING)
            async with cli.worker():
                # Back in the queue within the confirm window (10 s), not after
                # the visibility timeout (300 s).
                with trio.fail_after(25):
                    done = await cli.run("monitor", job.job_id)
        finally:
            frozen.send_signal(signal.SIGCONT)
        # Awake, the frozen worker finds the delivery in its poll, no longer its
        # own: it must not run the command. It ends with one of these.
        ends = (b"not running it", b"not completing it", b"could not complete it")
        await eventually(lambda: any(end in frozen.log for end in ends))
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"hi\n"
    assert runs.read_text() == "run\n"
    async with store.subscribe_events(job.job_id, EventQuery()) as stream:
        types = []
        while (event := await stream.receive()) is not None:
            types.append(event.event_type)
    # The delivery nobody took up was no run: nothing to close.
    assert EventType.PROCESS_ERROR not in types


async def test_a_worker_cut_off_from_its_server_stops_the_job_when_its_delivery_ends(
    tmp_path: Path,
) -> None:
    # Past its visibility timeout the server may give the job to another worker:
    # it must not run in two places at once.
    pid = tmp_path / "pid"
    async with run_server(poll_window=5, grace_period=0.1) as running:
        cli = Cli(running, tmp_path / "work")
        await running.store.enqueue_job(
            request_id(), "default", _sh(f"echo $$ > {pid}; exec sleep 60")
        )
        async with cli.worker("--visibility-timeout", "3") as worker:
            await eventually(lambda: pid.exists() and pid.read_text().strip() != "")
            job_pid = int(pid.read_text())
            # The server goes away (its context ends below); heartbeats fail.
            running.server.drain.begin()
            await worker.logged("no heartbeat accepted within its visibility timeout")
            await eventually(lambda: process_ended(job_pid))


async def test_output_past_the_servers_limit_is_cut_with_a_line_saying_so(
    tmp_path: Path, repo: Repo
) -> None:
    # Room for a few of the worker's items (up to 200 KiB each).
    limit = 512 * 1024
    store = MemoryJobStore(token_secret=b"e2e-secret", max_output_bytes=limit)
    async with run_server(store=store) as running:
        cli = Cli(running, tmp_path / "work")
        async with cli.worker():
            script = "yes x | head -c 4000000; echo done >&2; exit 4"
            done = await cli.run("submit", str(repo.path), "--", "sh", "-c", script)
            assert done.returncode == 4, done.stderr
            assert 0 < len(done.stdout) <= limit
            assert set(done.stdout) == set(b"x\n")
            assert (
                f"output truncated: the server stores at most {limit} bytes".encode()
                in done.stderr
            )
            assert b"process exited with code 4" in done.stderr
            job_id = done.stderr.split(b"job ", 1)[1].split(b" ", 1)[0].decode()
            monitored = await cli.run("monitor", job_id)
            assert monitored.returncode == 4
            assert monitored.stdout == done.stdout
            assert done.stderr.count(b"output truncated") == 1
            assert monitored.stderr.count(b"output truncated") == 1
