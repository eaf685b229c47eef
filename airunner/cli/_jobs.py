"""airunner-cli submit, monitor and list."""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from contextlib import aclosing
from pathlib import Path
from typing import Any

import trio
import yaml
from connectrpc.code import Code
from connectrpc.errors import ConnectError

from airunner.api.job.v1.job_pb import (
    EnqueueJobRequest,
    EventType,
    Job,
    JobEvent,
    JobParams,
    JobState,
    ListJobsRequest,
    ProcessType,
    StreamJobEventsRequest,
    StreamType,
)
from airunner.client import AirunnerClient
from airunner.store import last_sequence_of

from ._common import (
    CliError,
    client_options,
    explain,
    make_client,
    run_interruptibly,
    status,
)

# Keys of a job file, and the JobParams field each fills.
_CONFIG_KEYS = {
    "repository": "repository",
    "commit": "commit",
    "branch": "branch",
    "command": "command",
    "args": "args",
    "environment": "environment",
    "env": "environment",
    "metadata": "metadata",
    "owner": "owner",
    "process_type": "process_type",
    "timeout": "timeout_seconds",
    "timeout_seconds": "timeout_seconds",
    "working_directory": "working_directory",
    "queue": "queue",
}
_PROCESS_TYPES = {"pipe": ProcessType.PIPE, "pty": ProcessType.PTY}
_STATES = {state.name.lower(): state for state in JobState if state != JobState.UNSPECIFIED}
# A watcher whose stream broke reconnects this many times in a row before giving up.
RECONNECT_ATTEMPTS = 10
WATCH_INTERVAL_SECONDS = 2.0


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = client_options()
    submit = commands.add_parser(
        "submit",
        parents=[common],
        help="submit a job, then follow it (unless --detach)",
        usage="%(prog)s [REPOSITORY] [options] [-- COMMAND [ARG ...]]",
        epilog="The job's command line may follow --, as in: submit . -- make test",
    )
    submit.add_argument("repository", nargs="?", help="git URL or local path to check out")
    submit.add_argument("--config", type=Path, help="job file (YAML or JSON); flags override it")
    submit.add_argument("--queue", help="queue to submit to (default: default)")
    submit.add_argument("--command", help="program to run")
    submit.add_argument("--arg", action="append", dest="args", help="an argument (repeatable)")
    submit.add_argument("--env", action="append", default=[], metavar="K=V", help="environment")
    submit.add_argument("--process-type", choices=sorted(_PROCESS_TYPES), help="pipe or pty")
    submit.add_argument("--timeout", type=int, metavar="SECONDS", help="stop the job after this")
    submit.add_argument("--commit", help="commit to check out")
    submit.add_argument("--branch", help="branch to check out")
    submit.add_argument("--working-directory", help="directory inside the checkout to run in")
    submit.add_argument("--owner", help="who the job is for")
    submit.add_argument("--metadata", action="append", default=[], metavar="K=V")
    submit.add_argument("--request-id", help="idempotency key (default: a fresh one)")
    submit.add_argument("--detach", action="store_true", help="print the job id and return")
    submit.set_defaults(run=lambda args: run_interruptibly(lambda: _submit(args)))

    monitor = commands.add_parser(
        "monitor", parents=[common], help="replay and follow a job's output"
    )
    monitor.add_argument("job_id")
    monitor.add_argument("--from-sequence", type=int, default=0, metavar="N")
    monitor.set_defaults(run=lambda args: run_interruptibly(lambda: _monitor(args)))

    listing = commands.add_parser("list", parents=[common], help="list jobs, newest first")
    listing.add_argument("--queue", default="")
    listing.add_argument("--state", choices=sorted(_STATES))
    listing.add_argument("--page", type=int, default=1)
    listing.add_argument("--page-size", type=int, default=50)
    listing.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    listing.add_argument("--json", action="store_true", help="one JSON object per job")
    listing.set_defaults(run=lambda args: run_interruptibly(lambda: _list(args)))


# submit


def job_request(args: argparse.Namespace) -> EnqueueJobRequest:
    """The EnqueueJob request a submit command line asks for."""
    config = _read_config(args.config) if args.config else {}
    params = JobParams()
    queue = str(config.pop("queue", "") or "default")
    for key, value in config.items():
        _set_param(params, _CONFIG_KEYS[key], value, f"{args.config}: {key}")
    overrides = {
        "repository": args.repository,
        "commit": args.commit,
        "branch": args.branch,
        "command": args.command,
        "args": args.args,
        "owner": args.owner,
        "process_type": args.process_type,
        "timeout_seconds": args.timeout,
        "working_directory": args.working_directory,
    }
    for field, value in overrides.items():
        if value is not None:
            _set_param(params, field, value, f"--{field.replace('_', '-')}")
    if args.command_line:
        params.command, params.args = args.command_line[0], args.command_line[1:]
    params.environment.update(_pairs(args.env, "--env"))
    params.metadata.update(_pairs(args.metadata, "--metadata"))
    if args.queue:
        queue = args.queue
    if not params.command:
        raise CliError(
            "a command is required: -- COMMAND ARG..., --command CMD, or command: in --config"
        )
    if params.repository and not _looks_remote(params.repository):
        local = Path(params.repository).expanduser()
        if not local.exists():
            raise CliError(f"repository {params.repository!r} is neither a URL nor a local path")
        params.repository = str(local.resolve())
    return EnqueueJobRequest(
        request_id=args.request_id or str(uuid.uuid4()), queue=queue, job_params=params
    )


def _read_config(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as e:
        raise CliError(f"cannot read {path}: {e.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except ValueError as e:
        raise CliError(f"{path} is not valid JSON: {e}") from None
    except yaml.YAMLError as e:
        where = ""
        if isinstance(e, yaml.MarkedYAMLError) and e.problem_mark is not None:
            where = f" (line {e.problem_mark.line + 1})"
        problem = getattr(e, "problem", None) or "cannot parse"
        raise CliError(f"{path} is not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CliError(f"{path} must hold a mapping of job fields")
    unknown = sorted(set(data) - set(_CONFIG_KEYS))
    if unknown:
        raise CliError(
            f"{path}: unknown keys {', '.join(map(str, unknown))}; "
            f"known: {', '.join(sorted(_CONFIG_KEYS))}"
        )
    return dict(data)


def _set_param(params: JobParams, field: str, value: Any, where: str) -> None:
    if field in ("environment", "metadata"):
        if not isinstance(value, Mapping):
            raise CliError(f"{where} must be a mapping of names to values")
        getattr(params, field).update({str(k): str(v) for k, v in value.items()})
    elif field == "args":
        if not isinstance(value, list):
            raise CliError(f"{where} must be a list")
        params.args = [str(v) for v in value]
    elif field == "process_type":
        if str(value).lower() not in _PROCESS_TYPES:
            raise CliError(f"{where} must be pipe or pty, got {value!r}")
        params.process_type = _PROCESS_TYPES[str(value).lower()]
    elif field == "timeout_seconds":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise CliError(f"{where} must be a whole number of seconds, got {value!r}")
        params.timeout_seconds = value
    else:
        if isinstance(value, (dict, list)):
            raise CliError(f"{where} must be a string")
        setattr(params, field, str(value))


def _pairs(items: Sequence[str], flag: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"{flag} takes KEY=VALUE, got {item!r}")
        pairs[key] = value
    return pairs


def _looks_remote(repository: str) -> bool:
    return "://" in repository or ("@" in repository and ":" in repository)


async def _submit(args: argparse.Namespace) -> int:
    request = job_request(args)
    async with make_client(args) as client:
        try:
            response = await client.enqueue_job(request)
        except ConnectError as e:
            raise explain(e, client.server) from None
        if args.detach:
            print(response.job_id, flush=True)
            return 0
        status(f"job {response.job_id} submitted to queue {request.queue}")
        return await follow(client, response.job_id, 0)


# monitor


async def _monitor(args: argparse.Namespace) -> int:
    if args.from_sequence < 0:
        raise CliError("--from-sequence must not be negative")
    async with make_client(args) as client:
        return await follow(client, args.job_id, args.from_sequence)


async def follow(client: AirunnerClient, job_id: str, from_sequence: int) -> int:
    """Write the job's output as it comes; return its exit code.

    Output goes to stdout and stderr as the job wrote it, byte for byte; status
    lines go to stderr. A broken stream is resumed from the next sequence.
    """
    next_sequence = from_sequence
    exit_code: int | None = None
    attempts = 0
    while True:
        request = StreamJobEventsRequest(job_id=job_id, from_sequence=next_sequence)
        try:
            async with aclosing(client.stream_job_events(request)) as events:
                async for response in events:
                    attempts = 0
                    if response.event is None:
                        continue
                    outcome = _show(response.event)
                    if outcome is not None:
                        exit_code = outcome
                    next_sequence = last_sequence_of(response.event) + 1
            break
        except ConnectError as e:
            retryable = e.code in (Code.UNAVAILABLE, Code.RESOURCE_EXHAUSTED)
            attempts += 1
            if not retryable or attempts > RECONNECT_ATTEMPTS:
                if e.code == Code.NOT_FOUND:
                    raise CliError(f"no job {job_id}") from None
                raise explain(e, client.server) from None
            status(f"stream interrupted ({e.message}); resuming from sequence {next_sequence}")
            await trio.sleep(min(2.0**attempts / 4, 10.0))
    if exit_code is None:
        status("the job ended without reporting an exit code")
        return 1
    return exit_code


def _show(event: JobEvent) -> int | None:
    """Print one event; return the job's exit code once it is known."""
    data = event.event_data
    if data is None:
        return None
    if event.event_type == EventType.OUTPUT_BATCH and data.field == "output_batch":
        stdout, stderr = sys.stdout.buffer, sys.stderr.buffer
        for item in data.value.outputs:
            (stderr if item.stream_type == StreamType.STDERR else stdout).write(item.output)
        stdout.flush()
        stderr.flush()
    elif event.event_type == EventType.PROCESS_START and data.field == "process_start":
        status(f"process started (pid {data.value.pid})")
    elif event.event_type == EventType.PROCESS_END and data.field == "process_end":
        code = data.value.exit_code
        status(f"process exited with code {code}")
        return int(code)
    elif event.event_type == EventType.PROCESS_ERROR and data.field == "process_error":
        status(f"job failed: {data.value.error_message}")
        return 1
    return None


# list


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
