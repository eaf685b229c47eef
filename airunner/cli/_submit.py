"""airunner-cli submit: a job from flags and a job file, enqueued, then followed."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from connectrpc.errors import ConnectError

from airunner.api.job.v1.job_pb import EnqueueJobRequest, JobParams, ProcessType
from airunner.worker import MIN_SECRET_BYTES

from ._common import CliError, client_options, connected, explain, run_interruptibly, status
from ._monitor import EXIT_STATUS_HELP, Followed, add_interrupt_option, follow, on_interrupt

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
    "max_attempts": "max_attempts",
    "queue": "queue",
    "secrets": "secrets",
}
# The names --process-type and a job file's process_type accept.
_PROCESS_TYPES = {"pipe": ProcessType.PIPE, "pty": ProcessType.PTY}


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    submit = commands.add_parser(
        "submit",
        parents=[client_options()],
        help="submit a job, then follow it (unless --detach)",
        usage="%(prog)s [REPOSITORY] [options] [-- COMMAND [ARG ...]]",
        epilog="The job's command line may follow --, as in: submit . -- make test. "
        + EXIT_STATUS_HELP,
    )
    submit.add_argument("repository", nargs="?", help="git URL or local path to check out")
    submit.add_argument("--config", type=Path, help="job file (YAML or JSON); flags override it")
    submit.add_argument("--queue", help="queue to submit to (default: default)")
    submit.add_argument("--command", help="program to run")
    submit.add_argument("--arg", action="append", dest="args", help="an argument (repeatable)")
    submit.add_argument("--env", action="append", default=[], metavar="K=V", help="environment")
    submit.add_argument(
        "--secret",
        action="append",
        default=[],
        metavar="K[=V]",
        help="a secret the job gets as environment variable K (repeatable); K alone takes "
        "the value of this shell's environment variable K, which keeps it off the command "
        "line. The server stores it with the job (a retry reuses it) and shows only its "
        "name; it is never printed",
    )
    submit.add_argument("--process-type", choices=sorted(_PROCESS_TYPES), help="pipe or pty")
    submit.add_argument("--timeout", type=int, metavar="SECONDS", help="stop the job after this")
    submit.add_argument(
        "--max-attempts",
        type=int,
        metavar="N",
        help="runs the job may have if its worker is lost (default: the server's, 3)",
    )
    submit.add_argument("--commit", help="commit to check out")
    submit.add_argument("--branch", help="branch to check out")
    submit.add_argument("--working-directory", help="directory inside the checkout to run in")
    submit.add_argument("--owner", help="who the job is for")
    submit.add_argument("--metadata", action="append", default=[], metavar="K=V")
    submit.add_argument("--request-id", help="idempotency key (default: a fresh one)")
    submit.add_argument("--detach", action="store_true", help="print the job id and return")
    add_interrupt_option(submit)
    submit.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    followed = Followed()
    return run_interruptibly(
        lambda: _submit(args, followed), on_interrupt(args, followed, "airunner-cli submit")
    )


def job_request(args: argparse.Namespace) -> EnqueueJobRequest:
    """The EnqueueJob request a submit command line asks for."""
    config = _read_config(args.config) if args.config else {}
    params = JobParams()
    queue = str(config.pop("queue", "") or "default")
    for key, value in config.items():
        _set_param(params, _CONFIG_KEYS[key], value, f"{args.config}: {key}")
    # Each flag as the user typed it, for messages about its value.
    flags = {"timeout_seconds": "--timeout"}
    overrides = {
        "repository": args.repository,
        "commit": args.commit,
        "branch": args.branch,
        "command": args.command,
        "args": args.args,
        "owner": args.owner,
        "process_type": args.process_type,
        "timeout_seconds": args.timeout,
        "max_attempts": args.max_attempts,
        "working_directory": args.working_directory,
    }
    for field, value in overrides.items():
        if value is not None:
            flag = flags.get(field, f"--{field.replace('_', '-')}")
            _set_param(params, field, value, flag)
    if args.command_line:
        params.command, params.args = args.command_line[0], args.command_line[1:]
    params.environment.update(_pairs(args.env, "--env"))
    params.metadata.update(_pairs(args.metadata, "--metadata"))
    params.secrets.update(_secrets(args.secret))
    for name, value in sorted(params.secrets.items()):
        if len(value.encode()) < MIN_SECRET_BYTES:
            status(
                f"secret {name} is shorter than {MIN_SECRET_BYTES} bytes: its value is not "
                "redacted from the job's output (it would blank ordinary text)"
            )
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
        if not params.commit and not params.branch:
            _warn_if_uncommitted(local)
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
    if field == "secrets":
        params.secrets.update(_config_secrets(value, where))
    elif field in ("environment", "metadata"):
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
    elif field == "max_attempts":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CliError(f"{where} must be a whole number of runs, 1 or more, got {value!r}")
        params.max_attempts = value
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


def _secrets(items: Sequence[str]) -> dict[str, str]:
    """--secret K=V and --secret K (the value of environment variable K)."""
    secrets = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not name:
            raise CliError("--secret takes NAME=VALUE or NAME (read from the environment)")
        secrets[name] = value if sep else _from_environment(name, f"--secret {name}")
    return secrets


def _config_secrets(value: Any, where: str) -> dict[str, str]:
    """A job file's secrets: a mapping of names to values (a value left empty, or
    ~, is read from the environment variable of that name), or a list of names
    read from the environment."""
    if isinstance(value, list):
        value = dict.fromkeys(value)
    if not isinstance(value, Mapping):
        raise CliError(
            f"{where} must be a mapping of names to values, or a list of names to read "
            "from the environment"
        )
    secrets = {}
    for name, secret in value.items():
        if isinstance(secret, (dict, list)):
            # The value itself is never repeated, not even in an error.
            raise CliError(f"{where}: the value of {name} must be a string")
        name = str(name)
        secrets[name] = (
            str(secret)
            if secret not in (None, "")
            else _from_environment(name, f"{where}: {name}")
        )
    return secrets


def _from_environment(name: str, where: str) -> str:
    value = os.environ.get(name)
    if value is None:
        raise CliError(
            f"{where}: the environment variable {name} is not set; export it, "
            f"or give the value as {name}=VALUE"
        )
    return value


def _warn_if_uncommitted(path: Path) -> None:
    """A local repository's job runs its last commit: say so when the tree differs."""
    try:
        done = subprocess.run(
            ["git", "-C", str(path), "status", "--porcelain"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return
    changed = done.stdout.splitlines() if done.returncode == 0 else []
    if changed:
        status(
            f"{path} has {len(changed)} uncommitted change(s); the job runs its last "
            "commit without them (commit them first to include them)"
        )


def _looks_remote(repository: str) -> bool:
    return "://" in repository or ("@" in repository and ":" in repository)


async def _submit(args: argparse.Namespace, followed: Followed) -> int:
    request = job_request(args)
    async with connected(args) as client:
        try:
            response = await client.enqueue_job(request)
        except ConnectError as e:
            raise explain(e, client.server) from None
        if args.detach:
            print(response.job_id, flush=True)
            return 0
        followed.job_id = response.job_id
        status(f"job {response.job_id} submitted to queue {request.queue}")
        return await follow(client, response.job_id, 0, request.queue)
