"""Generated bodies, JSON and binary, against every RPC of a real server process.

Whatever comes in, only Connect errors come back (never ``unknown`` or
``internal``, never a traceback or a file path), nothing is logged as an error,
and the server stays up and healthy.
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airunner.api.job.v1 import job_pb
from airunner.http import MAX_JSON_NESTING
from tests.helpers import clean_env

pytestmark = pytest.mark.e2e

# CI runs a fixed sequence of examples; AIRUNNER_FUZZ_EXAMPLES=5000 runs that
# many new ones.
EXAMPLES = int(os.environ.get("AIRUNNER_FUZZ_EXAMPLES", "400"))
FIXED = "AIRUNNER_FUZZ_EXAMPLES" not in os.environ

# The server, with a short DequeueJob poll window so that a generated request
# that is a valid poll ends quickly.
_SERVER = """
import sys, trio
from airunner.config import MemoryStoreSettings
from airunner.server import Server, ServerSettings
from airunner.telemetry import configure_logging

configure_logging("text")

async def main():
    settings = ServerSettings(
        listen="127.0.0.1:0", store=MemoryStoreSettings(), auth=None, poll_window=0.3
    )
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(Server(settings).run)
        print(binds[0], flush=True)

trio.run(main)
"""


@dataclass(frozen=True)
class Rpc:
    path: str
    request: str
    streaming: bool  # the request or the response is a stream: enveloped messages


RPCS = [
    Rpc("/job.v1.JobService/EnqueueJob", "EnqueueJobRequest", False),
    Rpc("/job.v1.JobService/DequeueJob", "DequeueJobRequest", True),
    Rpc("/job.v1.JobService/UpdateJob", "UpdateJobRequest", False),
    Rpc("/job.v1.JobService/CompleteJob", "CompleteJobRequest", False),
    Rpc("/job.v1.JobService/ListJobs", "ListJobsRequest", False),
    Rpc("/job.v1.JobEventsService/StreamJobEvents", "StreamJobEventsRequest", True),
    Rpc("/job.v1.JobEventsService/PublishJobEvents", "PublishJobEventsRequest", True),
]

# Codes a malformed or meaningless request may get. Never unknown or internal.
EXPECTED_CODES = {
    "canceled",
    "invalid_argument",
    "not_found",
    "already_exists",
    "permission_denied",
    "resource_exhausted",
    "failed_precondition",
    "aborted",
    "out_of_range",
    "unimplemented",
    "unavailable",
    "unauthenticated",
    "deadline_exceeded",
}
GRPC_CODES = {1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16}
# What must never reach a client.
LEAKS = re.compile(r"Traceback|File \"|site-packages|\.py\b|/work/|/home/|0x[0-9a-f]{8,}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    log = tmp_path_factory.mktemp("fuzz") / "server.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-c", _SERVER],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=clean_env(),
            cwd=Path(__file__).parents[2],
        )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://"), log.read_text()
        yield url, log
        assert process.poll() is None, f"the server ended:\n{log.read_text()}"
    finally:
        process.kill()
        process.wait()


# The JSON names of every field of every message: generated objects use them,
# so that many reach the handlers rather than stopping at the parser.
FIELD_NAMES = sorted({f.json_name for m in job_pb.desc().messages for f in m.fields})


_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
    | st.sampled_from(["default", "priority", "JOB_STATE_RUNNING", "EVENT_TYPE_OUTPUT", "AA=="])
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


def _json_bodies(rpc: Rpc) -> st.SearchStrategy[bytes]:
    shaped = st.dictionaries(st.sampled_from(FIELD_NAMES), _values, max_size=6)
    deep = st.integers(min_value=MAX_JSON_NESTING - 2, max_value=50_000).map(
        lambda depth: b'{"queue":' * depth + b"1" + b"}" * depth
    )
    return st.one_of(
        shaped.map(lambda value: json.dumps(value).encode()),
        _values.map(lambda value: json.dumps(value).encode()),
        deep,
        st.binary(max_size=200),
    )


def _binary_bodies(rpc: Rpc) -> st.SearchStrategy[bytes]:
    message = getattr(job_pb, rpc.request)
    valid_then_noise = st.tuples(_messages(message), st.binary(max_size=30)).map(
        lambda parts: parts[0] + parts[1]
    )
    # Unknown fields as groups nested many levels deep.
    groups = st.integers(min_value=1, max_value=100_000).map(
        lambda depth: b"\x7b" * depth + b"\x7c" * depth
    )
    return st.one_of(st.binary(max_size=300), valid_then_noise, groups)


def _messages(message: Any) -> st.SearchStrategy[bytes]:
    """Binary messages of the right type with generated strings in them."""
    strings = st.text(max_size=30)
    if message is job_pb.EnqueueJobRequest:
        return st.builds(
            lambda r, q, c, a: message(
                request_id=r, queue=q, job_params=job_pb.JobParams(command=c, args=a)
            ).to_binary(),
            strings,
            st.sampled_from(["default", "priority", "", "nope"]),
            strings,
            st.lists(strings, max_size=3),
        )
    if message is job_pb.StreamJobEventsRequest:
        return st.builds(
            lambda j, s: message(job_id=j, from_sequence=s).to_binary(),
            strings,
            st.integers(min_value=-(2**63), max_value=2**63 - 1),
        )
    return st.builds(lambda: message().to_binary())


def _envelope(body: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(body)) + body


@st.composite
def requests(draw: st.DrawFn) -> tuple[Rpc, str, bytes]:
    rpc = draw(st.sampled_from(RPCS))
    protocol = draw(st.sampled_from(["connect", "grpc-web"]))
    encoding = draw(st.sampled_from(["json", "proto"]))
    body = draw(_json_bodies(rpc) if encoding == "json" else _binary_bodies(rpc))
    if protocol == "grpc-web":
        content_type = f"application/grpc-web+{encoding}"
    elif rpc.streaming:
        content_type = f"application/connect+{encoding}"
    else:
        content_type = f"application/{encoding}"
    if protocol == "grpc-web" or rpc.streaming:
        framing = draw(st.sampled_from(["one", "two", "raw", "end"]))
        if framing == "one":
            body = _envelope(body)
        elif framing == "two":
            body = _envelope(body) + _envelope(body)
        elif framing == "end":
            body = _envelope(body) + _envelope(b"{}", 2)
    return rpc, content_type, body


def _check_error_json(text: bytes) -> None:
    error = json.loads(text)
    if "code" not in error:  # a Connect end-of-stream message
        error = error.get("error")
        if error is None:
            return
    assert error.get("code") in EXPECTED_CODES, error
    assert not LEAKS.search(error.get("message", "")), error
    assert len(error.get("message", "")) <= 1000, error


def _check_response(response: httpx.Response, content_type: str) -> None:
    assert not LEAKS.search(response.text), response.text[:2000]
    if content_type.startswith("application/grpc-web"):
        assert response.status_code in (200, 415), response.status_code
        if response.status_code != 200:
            return
        status = response.headers.get("grpc-status")
        if status is None:
            trailers = response.content.rsplit(b"grpc-status:", 1)
            assert len(trailers) == 2, response.content[-500:]
            status = trailers[1].split(b"\r\n", 1)[0].strip().decode()
        assert int(status) == 0 or int(status) in GRPC_CODES, status
        return
    if content_type.startswith("application/connect+"):
        if response.status_code != 200:
            assert response.status_code in (400, 415), response.status_code
            return
        # The last envelope is the end-of-stream message.
        data = response.content
        last = b""
        while data:
            flags, length = struct.unpack(">BI", data[:5])
            last, data = data[5 : 5 + length], data[5 + length :]
            if flags & 2:
                _check_error_json(last)
                return
        raise AssertionError(f"stream without an end message: {response.content[:500]!r}")
    if response.status_code != 200:
        assert response.status_code != 500, response.text
        if response.headers.get("content-type", "").startswith("application/json"):
            _check_error_json(response.content)


@given(request=requests())
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=FIXED,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
def test_generated_requests_get_connect_errors_only(
    server: tuple[str, Path], request: tuple[Rpc, str, bytes]
) -> None:
    url, log = server
    rpc, content_type, body = request
    # A connection each: a server that answered before reading the whole body
    # may close the connection rather than read the rest.
    response = httpx.post(
        url + rpc.path, content=body, headers={"content-type": content_type}, timeout=10
    )
    _check_response(response, content_type)
    assert httpx.get(url + "/health", timeout=10).json() == {"status": "ok"}
    logged = log.read_text()
    assert "Traceback" not in logged, logged[-3000:]
    assert "ERROR" not in logged, logged[-3000:]
