"""airunner-cli monitor: replay a job's output, then follow it to the job's end."""

from __future__ import annotations

import argparse
import sys
from contextlib import aclosing

import trio
from connectrpc.code import Code
from connectrpc.errors import ConnectError

from airunner.api.job.v1.job_pb import EventType, JobEvent, StreamJobEventsRequest, StreamType
from airunner.client import AirunnerClient
from airunner.store import last_sequence_of

from ._common import CliError, client_options, explain, make_client, run_interruptibly, status

# A watcher whose stream broke reconnects this many times in a row before giving up.
RECONNECT_ATTEMPTS = 10


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    monitor = commands.add_parser(
        "monitor", parents=[client_options()], help="replay and follow a job's output"
    )
    monitor.add_argument("job_id")
    monitor.add_argument(
        "--from-sequence",
        type=int,
        default=0,
        metavar="N",
        help="start at event N (default 0: the whole log); a broken stream says where to resume",
    )
    monitor.set_defaults(run=lambda args: run_interruptibly(lambda: _monitor(args)))


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
        # An exit status has 8 bits: a failure whose code they would read as 0
        # exits 1.
        return code if 0 <= code <= 255 else 1
    elif event.event_type == EventType.PROCESS_ERROR and data.field == "process_error":
        status(f"job failed: {data.value.error_message}")
        return 1
    elif event.event_type == EventType.OUTPUT_TRUNCATED and data.field == "output_truncated":
        sys.stdout.flush()
        status(
            f"output truncated: the server stores at most {data.value.limit_bytes} bytes "
            "of a job's output; the rest was dropped"
        )
    return None
