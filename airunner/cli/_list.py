"""airunner-cli list: jobs, newest first, as a table or as JSON, once or refreshed."""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Sequence

import trio
from connectrpc.errors import ConnectError
from protobuf.wkt import Timestamp

from airunner.api.job.v1.job_pb import Job, JobParams, JobState, ListJobsRequest

from ._common import CliError, client_options, connected, explain, run_interruptibly

# The names --state accepts: every state a job can be in, in lower case.
_STATES = {state.name.lower(): state for state in JobState if state != JobState.UNSPECIFIED}
# --watch refreshes this often: fresh enough to follow, light on the server.
WATCH_INTERVAL_SECONDS = 2.0


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    listing = commands.add_parser(
        "list", parents=[client_options()], help="list jobs, newest first"
    )
    listing.add_argument("--queue", default="", help="only jobs of this queue")
    listing.add_argument(
        "--state",
        type=parse_state,
        metavar="STATE",
        help=f"only jobs in this state: {', '.join(_STATES)}",
    )
    listing.add_argument("--owner", default="", help="only jobs submitted with this --owner")
    listing.add_argument("--page", type=int, default=1, help="which page, from 1 (default 1)")
    listing.add_argument(
        "--page-size", type=int, default=50, help="jobs per page, newest first (default 50)"
    )
    listing.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    listing.add_argument("--json", action="store_true", help="one JSON object per job")
    listing.set_defaults(run=lambda args: run_interruptibly(lambda: _list(args)))


def parse_state(name: str) -> JobState:
    """A --state value, in any case."""
    state = _STATES.get(name.strip().lower())
    if state is None:
        raise argparse.ArgumentTypeError(
            f"unknown state {name!r}: use one of {', '.join(_STATES)}"
        )
    return state


async def _list(args: argparse.Namespace) -> int:
    if args.page < 1 or not 1 <= args.page_size <= 1000:
        raise CliError("--page must be 1 or more and --page-size between 1 and 1000")
    request = ListJobsRequest(
        queue=args.queue,
        state=args.state or JobState.UNSPECIFIED,
        page=args.page,
        page_size=args.page_size,
        owner=args.owner,
    )
    async with connected(args) as client:
        while True:
            try:
                response = await client.list_jobs(request)
            except ConnectError as e:
                raise explain(e, client.server) from None
            if args.watch and sys.stdout.isatty():
                sys.stdout.write("\x1b[H\x1b[2J")
            if args.json:
                for job in response.jobs:
                    print(without_secrets(job).to_json())
            else:
                print(render_table(response.jobs, time.time()))
                if response.last_page > 1:
                    print(f"page {args.page} of {response.last_page}")
            sys.stdout.flush()
            if not args.watch:
                return 0
            await trio.sleep(WATCH_INTERVAL_SECONDS)


def render_table(jobs: Sequence[Job], now: float) -> str:
    """The jobs as an aligned table, one row each."""
    rows = [("ID", "QUEUE", "STATE", "ATTEMPT", "WORKER", "EXIT", "DURATION", "AGE", "COMMAND")]
    for job in jobs:
        params = job.job_params or JobParams()
        created = seconds_of(job.created_at) or now
        command = " ".join([params.command, *params.args])
        rows.append(
            (
                job.job_id,
                job.queue or "-",
                state_text(job),
                str(job.attempt),
                _clip(job.worker or "-", 24),
                str(job.exit_code) if job.has_field("exit_code") else "-",
                duration_text(job, now),
                age_text(now - created),
                _clip(command, 40),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines)


def state_text(job: Job) -> str:
    """The job's state in lower case, marked where it is not the whole story."""
    text = job.state.name.lower()
    if job.state == JobState.RUNNING and job.cancel_requested:
        return f"{text} (cancelling)"
    if job.timed_out:
        return f"{text} (timed out)"
    return text


def duration_text(job: Job, now: float) -> str:
    """How long its last run took, or has run so far; "-" before it starts."""
    started = seconds_of(job.started_at)
    if started is None:
        return "-"
    finished = seconds_of(job.finished_at)
    if finished is None:
        if job.state != JobState.RUNNING:
            return "-"
        finished = now
    return age_text(finished - started)


def seconds_of(timestamp: Timestamp | None) -> float | None:
    """A timestamp in seconds since the epoch, or None if unset."""
    if timestamp is None or (timestamp.seconds == 0 and timestamp.nanos == 0):
        return None
    return timestamp.to_nanos() / 1e9


def without_secrets(job: Job) -> Job:
    """The job with no secret values, whatever the server sent: names only."""
    if job.job_params is None or not job.job_params.secrets:
        return job
    shown = copy.deepcopy(job)
    assert shown.job_params is not None
    shown.secret_names = sorted(set(shown.secret_names) | set(shown.job_params.secrets))
    shown.job_params.secrets = {}
    return shown


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def age_text(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
