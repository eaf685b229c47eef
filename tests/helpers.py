"""Builders and tool lookups shared by the tests."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from protobuf import Oneof
from protobuf.wkt import Timestamp

from airunner.api.job.v1.job_pb import (
    EventType,
    JobEvent,
    JobParams,
    JobResult,
    OutputBatchEvent,
    OutputItem,
    ProcessEndEvent,
    ProcessStartEvent,
    StreamType,
)

_request_ids = itertools.count(1)


def request_id() -> str:
    return f"request-{next(_request_ids)}"


def params(command: str = "echo", *args: str, **fields: object) -> JobParams:
    return JobParams(command=command, args=list(args), **fields)  # type: ignore[arg-type]


def start_event(sequence: int, *, ms: int = 0) -> JobEvent:
    return JobEvent(
        sequence=sequence,
        event_type=EventType.PROCESS_START,
        timestamp=Timestamp.from_nanos(ms * 1_000_000) if ms else None,
        event_data=Oneof(field="process_start", value=ProcessStartEvent(pid=42)),
    )


def output_event(sequence: int, data: bytes = b"hello\n", *, ms: int = 0) -> JobEvent:
    return JobEvent(
        sequence=sequence,
        event_type=EventType.OUTPUT_BATCH,
        timestamp=Timestamp.from_nanos(ms * 1_000_000) if ms else None,
        event_data=Oneof(
            field="output_batch",
            value=OutputBatchEvent(
                outputs=[OutputItem(output=data, stream_type=StreamType.STDOUT)],
                start_sequence=sequence,
                end_sequence=sequence,
            ),
        ),
    )


def end_event(sequence: int, exit_code: int = 0) -> JobEvent:
    return JobEvent(
        sequence=sequence,
        event_type=EventType.PROCESS_END,
        event_data=Oneof(field="process_end", value=ProcessEndEvent(pid=42, exit_code=exit_code)),
    )


def result(job_id: str, *, success: bool = True, exit_code: int = 0) -> JobResult:
    return JobResult(job_id=job_id, success=success, exit_code=exit_code)


ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait until ``condition()`` holds: for state that another thread or the
    server's own tasks change, where no event exists to wait on."""
    with trio.fail_after(10):
        while not condition():  # noqa: ASYNC110
            await trio.sleep(0.01)


async def read_until(stream: trio.abc.ReceiveStream | None, marker: bytes) -> bytes:
    """Read ``stream`` until ``marker`` appears; return everything read."""
    assert stream is not None
    seen = b""
    with trio.fail_after(30):
        while marker not in seen:
            chunk = await stream.receive_some()
            if not chunk:
                raise AssertionError(f"stream ended before {marker!r}: {seen!r}")
            seen += chunk
    return seen


def process_ended(pid: int) -> bool:
    """Whether process ``pid`` has ended. It need not be our child, so it may stay
    a zombie until whoever inherited it reaps it: that counts as ended."""
    status = subprocess.run(
        ["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True, check=False
    ).stdout.strip()
    return status[:1] in ("", "Z")


def tool(name: str) -> str:
    """A command installed beside this Python (the test extras), else on PATH."""
    local = BIN / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed; install the test extras: pip install -e '.[test]'")
    return found


def tool_env() -> dict[str, str]:
    """The environment for tools that look up plugins on PATH."""
    return os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


# Variables of the developer's shell that would change what a command does.
_OURS = re.compile(r"^(AIRUNNER_|JWT_|AWS_|OTEL_)")


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for running airunner's commands in tests."""
    return {k: v for k, v in os.environ.items() if not _OURS.match(k)} | extra
