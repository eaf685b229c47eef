"""airunner-cli list: jobs, newest first, as a table or as JSON, once or refreshed."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import trio
from connectrpc.errors import ConnectError

from airunner.api.job.v1.job_pb import Job, JobParams, JobState, ListJobsRequest

from ._common import CliError, client_options, explain, make_client, run_interruptibly

# The names --state accepts: every state a job can be in, in lower case.
_STATES = {state.name.lower(): state for state in JobState if state != JobState.UNSPECIFIED}
# --watch refreshes this often: fresh enough to follow, light on the server.
WATCH_INTERVAL_SECONDS = 2.0


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    listing = commands.add_parser(
        "list", parents=[client_options()], help="list jobs, newest first"
    )
    listing.add_argument("--queue", default="")
    listing.add_argument("--state", choices=sorted(_STATES))
    listing.add_argument("--page", type=int, default=1)
    listing.add_argument("--page-size", type=int, default=50)
    listing.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    listing.add_argument("--json", action="store_true", help="one JSON object per job")
    listing.set_defaults(run=lambda args: run_interruptibly(lambda: _list(args)))


async def _list(args: argparse.Namespace) -> int:
    if args.page < 1 or not 1 <= args.page_size <= 1000:
        raise CliError("--page must be 1 or more and --page-size between 1 and 1000")
    request = ListJobsRequest(
        queue=args.queue,
        state=_STATES[args.state] if args.state else JobState.UNSPECIFIED,
        page=args.page,
        page_size=args.page_size,
    )
    async with make_client(args) as client:
        while True:
            try:
                response = await client.list_jobs(request)
            except ConnectError as e:
                raise explain(e, client.server) from None
            if args.watch and sys.stdout.isatty():
                sys.stdout.write("\x1b[H\x1b[2J")
            if args.json:
                for job in response.jobs:
                    print(job.to_json())
            else:
                print(render_table(response.jobs, time.time(), args.queue))
                if response.last_page > 1:
                    print(f"page {args.page} of {response.last_page}")
            sys.stdout.flush()
            if not args.watch:
                return 0
            await trio.sleep(WATCH_INTERVAL_SECONDS)


def render_table(jobs: Sequence[Job], now: float, queue: str = "") -> str:
    """The jobs as an aligned table. A Job does not name its queue, so the
    QUEUE column shows the queue the listing was filtered by, or "-"."""
    rows = [("ID", "QUEUE", "STATE", "COMMAND", "REPOSITORY", "AGE")]
    for job in jobs:
        params = job.job_params or JobParams()
        created = job.created_at.to_nanos() / 1e9 if job.created_at else now
        command = " ".join([params.command, *params.args])
        rows.append(
            (
                job.job_id,
                queue or "-",
                job.state.name.lower(),
                _clip(command, 40),
                _clip(params.repository or "-", 40),
                _age(now - created),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
