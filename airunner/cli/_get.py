"""airunner-cli get: one job's record, as a block of lines or as JSON."""

from __future__ import annotations

import argparse
import shlex
import time

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from protobuf.wkt import Timestamp

from airunner.api.job.v1.job_pb import GetJobRequest, Job, JobParams, JobState
from airunner.store.rules import RETRY_OF_METADATA

from ._common import CliError, client_options, connected, explain, run_interruptibly
from ._list import age_text, duration_text, seconds_of, state_text, without_secrets


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    get = commands.add_parser(
        "get",
        parents=[client_options()],
        help="show one job: its state, where and how it ran, how it ended",
        description="Show one job. Secrets are shown by name only.",
    )
    get.add_argument("job_id")
    get.add_argument("--json", action="store_true", help="the job as one JSON object")
    get.set_defaults(run=lambda args: run_interruptibly(lambda: _get(args)))


async def _get(args: argparse.Namespace) -> int:
    async with connected(args) as client:
        try:
            response = await client.get_job(GetJobRequest(job_id=args.job_id))
        except ConnectError as e:
            raise not_found_or(e, args.job_id, client.server) from None
    job = without_secrets(response.job or Job(job_id=args.job_id))
    print(job.to_json() if args.json else render_job(job, time.time()), flush=True)
    return 0


def not_found_or(error: ConnectError, job_id: str, server: str) -> CliError:
    """A failed call about one job, as a user reads it."""
    if error.code == Code.NOT_FOUND:
        return CliError(
            f"no job {job_id} on {server} (finished jobs are kept for a while, then dropped); "
            "`airunner-cli list` shows the jobs there are"
        )
    return explain(error, server)


def render_job(job: Job, now: float) -> str:
    """The job as aligned "name  value" lines: what it is, then how it ran and ended."""
    params = job.job_params or JobParams()
    lines: list[tuple[str, str]] = [
        ("job", job.job_id),
        ("state", state_text(job)),
        ("queue", job.queue or "-"),
        ("owner", params.owner or "-"),
        ("command", shlex.join([params.command, *params.args]) if params.command else "-"),
    ]
    if params.repository:
        where = params.repository
        for name in ("branch", "commit"):
            if value := getattr(params, name):
                where += f" ({name} {value})"
        lines.append(("repository", where))
    if params.working_directory:
        lines.append(("directory", params.working_directory))
    if params.timeout_seconds:
        lines.append(("timeout", f"{params.timeout_seconds} s"))
    lines += [
        (
            "attempt",
            str(job.attempt) + (f" of {params.max_attempts}" if params.max_attempts else ""),
        ),
        ("worker", job.worker or "-"),
        ("created", _time_text(job.created_at, now)),
        ("started", _time_text(job.started_at, now)),
        ("finished", _time_text(job.finished_at, now)),
        ("duration", duration_text(job, now)),
        ("exit code", str(job.exit_code) if job.has_field("exit_code") else "-"),
    ]
    if job.failure_reason:
        lines.append(("failure", job.failure_reason))
    if job.timed_out:
        lines.append(("timed out", f"yes, after {params.timeout_seconds} s"))
    if job.cancel_requested or job.state == JobState.CANCELLED:
        cancel = "requested" if job.state == JobState.RUNNING else "yes"
        if job.cancel_reason:
            cancel += f": {job.cancel_reason}"
        lines.append(("cancelled", cancel))
    if job.secret_names:
        lines.append(("secrets", ", ".join(job.secret_names) + " (values not shown)"))
    if params.environment:
        lines.append(("environment", ", ".join(sorted(params.environment))))
    metadata = dict(params.metadata)
    if retry_of := metadata.pop(RETRY_OF_METADATA, ""):
        lines.append(("retry of", retry_of))
    for name, value in sorted(metadata.items()):
        lines.append((f"metadata {name}", value))
    width = max(len(name) for name, _ in lines)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in lines)


def _time_text(timestamp: Timestamp | None, now: float) -> str:
    seconds = seconds_of(timestamp)
    if seconds is None:
        return "-"
    local = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(seconds))
    return f"{local} ({age_text(now - seconds)} ago)"
