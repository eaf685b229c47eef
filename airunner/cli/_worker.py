"""airunner-cli worker: run jobs from a queue."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import tempfile
from pathlib import Path

import trio

from airunner import telemetry
from airunner.client import DEFAULT_MAX_CALLS
from airunner.store import InvalidArgument, rules
from airunner.worker import (
    CANCEL_CHECK_SECONDS,
    KILL_GRACE_SECONDS,
    WORKER_SECRETS,
    JobUser,
    JobUserError,
    PollRefused,
    Worker,
    WorkerSettings,
    become_subreaper,
    make_undumpable,
)

from ._common import CliError, client_options, first_leaf, make_client, resolve_token

log = logging.getLogger("airunner.worker")

# A cancelled job keeps its slot at most this long after its SIGTERM.
MAX_CANCEL_GRACE_SECONDS = 3600
# Each check is a GetJob (in SQS mode a DynamoDB read) per running job: more
# often loads the server for little; less often, a cancel waits minutes.
MIN_CANCEL_CHECK_SECONDS = 0.1
MAX_CANCEL_CHECK_SECONDS = 600


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    worker = commands.add_parser(
        "worker", parents=[client_options()], help="take jobs from a queue and run them"
    )
    telemetry.add_log_format_option(worker)
    worker.add_argument(
        "--queue",
        action="append",
        metavar="NAME",
        help="take jobs from this queue; repeat it to serve several, the first first "
        "(a job of a later queue only when the earlier ones have none; default: default)",
    )
    worker.add_argument(
        "--name",
        default=socket.gethostname(),
        help="recorded on the jobs this worker takes (default: the host name, "
        f"{socket.gethostname()})",
    )
    worker.add_argument(
        "--visibility-timeout",
        type=int,
        default=300,
        metavar="SECONDS",
        help="how long a job stays ours without a heartbeat (default 300)",
    )
    worker.add_argument("--concurrency", type=int, default=1, help="jobs at once (default 1)")
    worker.add_argument(
        "--work-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "airunner",
        help="where job workspaces are made (default: a folder in the temp dir)",
    )
    worker.add_argument(
        "--drain-timeout",
        type=float,
        default=0,
        metavar="SECONDS",
        help="after SIGTERM, how long running jobs may take before they are stopped "
        "(default 0: no limit; a second signal stops them at once)",
    )
    worker.add_argument(
        "--job-user",
        metavar="NAME",
        help="run each job as this user, with its groups and home (the worker must run as "
        "root); jobs then cannot read the worker's files or environment",
    )
    worker.add_argument(
        "--cancel-grace",
        type=float,
        default=KILL_GRACE_SECONDS,
        metavar="SECONDS",
        help="how long a cancelled job's processes have between SIGTERM and SIGKILL "
        f"(default {KILL_GRACE_SECONDS:.0f})",
    )
    worker.add_argument(
        "--cancel-check-interval",
        type=float,
        default=CANCEL_CHECK_SECONDS,
        metavar="SECONDS",
        help="how often each running job asks the server whether it was cancelled: one "
        f"GetJob per running job (default {CANCEL_CHECK_SECONDS:.0f})",
    )
    worker.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.visibility_timeout <= rules.MAX_VISIBILITY_TIMEOUT_SECONDS:
        raise CliError(
            f"--visibility-timeout must be between 1 and {rules.MAX_VISIBILITY_TIMEOUT_SECONDS}"
        )
    if args.concurrency < 1:
        raise CliError("--concurrency must be 1 or more")
    if args.drain_timeout < 0:
        raise CliError("--drain-timeout must not be negative")
    queues = tuple(dict.fromkeys(args.queue or ["default"]))
    if not all(queues):
        raise CliError("--queue needs a queue name")
    try:
        rules.check_worker_name(args.name)
    except InvalidArgument as e:
        raise CliError(f"--name: {e}") from None
    if not 0 <= args.cancel_grace <= MAX_CANCEL_GRACE_SECONDS:
        raise CliError(f"--cancel-grace must be between 0 and {MAX_CANCEL_GRACE_SECONDS}")
    if not MIN_CANCEL_CHECK_SECONDS <= args.cancel_check_interval <= MAX_CANCEL_CHECK_SECONDS:
        raise CliError(
            f"--cancel-check-interval must be between {MIN_CANCEL_CHECK_SECONDS} and "
            f"{MAX_CANCEL_CHECK_SECONDS}"
        )
    try:
        job_user = JobUser.named(args.job_user) if args.job_user is not None else None
    except JobUserError as e:
        raise CliError(str(e)) from None
    try:
        args.work_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CliError(f"cannot use --work-dir {args.work_dir}: {e.strerror}") from None
    # Read once, here: the file may be one the jobs cannot read.
    resolve_token(args)
    _guard_secrets()
    telemetry.configure_logging(args.log_format)
    reap_orphans = become_subreaper()
    if not reap_orphans:
        log.warning("not on Linux: a job's processes that leave its process group outlive it")
    if job_user is None and os.geteuid() == 0:
        log.warning(
            "jobs run as root: they can read the worker's token and everything else; "
            "pass --job-user NAME to run them as another user"
        )
    settings = WorkerSettings(
        queues=queues,
        name=args.name,
        visibility_timeout=args.visibility_timeout,
        concurrency=args.concurrency,
        work_dir=args.work_dir,
        job_user=job_user,
        reap_orphans=reap_orphans,
        cancel_grace=args.cancel_grace,
        cancel_check_interval=args.cancel_check_interval,
    )
    try:
        trio.run(_serve, args, settings)
    except* PollRefused as refused:
        # A worker that can never take a job says why and ends, instead of
        # retrying for ever and looking alive.
        error = first_leaf(refused).error
        raise CliError(
            f"the server at {' or '.join(args.server)} refused to give jobs from "
            f"{_queues_text(settings.queues)}: {error.code.value}: {error.message}"
        ) from None
    return 0


def _queues_text(queues: tuple[str, ...]) -> str:
    """``queue default``, or ``queues priority, default`` (in the worker's order)."""
    return f"queue{'s' if len(queues) > 1 else ''} {', '.join(queues)}"


def _guard_secrets() -> None:
    """Keep the worker's secrets from its jobs, beyond not passing them on."""
    # Gone from what any child could inherit (the copy /proc/<pid>/environ shows
    # stays: the kernel keeps the environment the process started with)...
    for name in WORKER_SECRETS:
        os.environ.pop(name, None)
    # ...and that copy, the worker's memory and open files are closed to the
    # processes of its own user: a job running as the worker's user.
    make_undumpable()


async def _serve(args: argparse.Namespace, settings: WorkerSettings) -> None:
    # Each running job makes a heartbeat, a cancel check and a completion call
    # at times; the poll and the event streams have threads of their own.
    max_calls = max(DEFAULT_MAX_CALLS, 3 * settings.concurrency + 2)
    async with make_client(args, max_calls=max_calls) as client:
        worker = Worker(client, settings)
        log.info(
            "worker polling %s on %s (name %s, concurrency %d)",
            _queues_text(settings.queues),
            client.server,
            settings.name,
            settings.concurrency,
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signals, worker, args.drain_timeout)
            await worker.run()
            nursery.cancel_scope.cancel()


async def _stop_on_signals(worker: Worker, drain_timeout: float) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if not worker.stop.is_set():
                log.info("%s: taking no new jobs; running jobs may finish", name)
                worker.stop.set()
                if drain_timeout:
                    trio.lowlevel.spawn_system_task(_kill_after, worker, drain_timeout)
            else:
                log.info("%s again: stopping running jobs", name)
                worker.kill.set()


async def _kill_after(worker: Worker, seconds: float) -> None:
    await trio.sleep(seconds)
    if not worker.kill.is_set():
        log.info("drain timeout: stopping running jobs")
        worker.kill.set()
