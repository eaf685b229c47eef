"""Telemetry from real processes, received by an OTLP/HTTP receiver in the test.

Server (sqs mode on moto's server), worker and CLI export to the receiver; one
job's story must arrive as one trace, with RPC and AWS call spans, and the
metrics with their bounded attributes.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
from opentelemetry import trace
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from airunner import telemetry
from tests.asgi import lifespan, read_body, respond, serving
from tests.e2e.test_commands import server_process
from tests.helpers import clean_env, eventually, tool

# Metric attributes airunner may use: bounded sets, never a job id.
BOUNDED_ATTRIBUTES = {"queue", "state", "operation", "reason", "channel"}


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


@dataclass
class ReceivedSpan:
    service: str
    span: Span

    @property
    def name(self) -> str:
        return self.span.name

    @property
    def trace_id(self) -> str:
        return self.span.trace_id.hex()

    @property
    def attributes(self) -> dict[str, Any]:
        return _attributes(self.span.attributes)


@dataclass
class ReceivedPoint:
    service: str
    metric: str
    attributes: dict[str, Any]


@dataclass
class OtlpReceiver:
    """An OTLP/HTTP collector: decodes what it receives with opentelemetry-proto."""

    url: str = ""
    spans: list[ReceivedSpan] = field(default_factory=list)
    points: list[ReceivedPoint] = field(default_factory=list)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        body = await read_body(receive)
        if scope["path"] == "/v1/traces":
            self._traces(ExportTraceServiceRequest.FromString(body))
            answer = ExportTraceServiceResponse().SerializeToString()
        elif scope["path"] == "/v1/metrics":
            self._metrics(ExportMetricsServiceRequest.FromString(body))
            answer = ExportMetricsServiceResponse().SerializeToString()
        else:
            await respond(send, 404, b"")
            return
        await respond(send, 200, answer, [(b"content-type", b"application/x-protobuf")])

    def _traces(self, request: ExportTraceServiceRequest) -> None:
        for resource_spans in request.resource_spans:
            service = _attributes(resource_spans.resource.attributes)["service.name"]
            for scope_spans in resource_spans.scope_spans:
                self.spans += [ReceivedSpan(service, span) for span in scope_spans.spans]

    def _metrics(self, request: ExportMetricsServiceRequest) -> None:
        for resource_metrics in request.resource_metrics:
            service = _attributes(resource_metrics.resource.attributes)["service.name"]
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    data = getattr(metric, metric.WhichOneof("data"))
                    for point in data.data_points:
                        self.points.append(
                            ReceivedPoint(service, metric.name, _attributes(point.attributes))
                        )

    def spans_of(self, service: str) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.service == service]

    def metric(self, name: str) -> list[dict[str, Any]]:
        return [p.attributes for p in self.points if p.metric == name]


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    app = OtlpReceiver()
    async with serving(app) as url:
        app.url = url
        yield app


def _otel_env(endpoint: str) -> dict[str, str]:
    # Frequent exports, so that a test waits seconds, not a minute.
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }


async def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [tool("airunner-cli"), *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=clean_env(**env),
    )


async def _run_one_job(
    server_env: dict[str, str], otel: dict[str, str], work_dir: Path
) -> tuple[subprocess.CompletedProcess[bytes], subprocess.CompletedProcess[bytes]]:
    """Server, worker and a submitted job (with heartbeats), then a replay of its log."""
    async with server_process("--no-auth", **server_env, **otel) as server:
        worker = await trio.lowlevel.open_process(
            [
                tool("airunner-cli"),
                *("worker", "--server", server.url, "--work-dir", str(work_dir)),
                *("--visibility-timeout", "3"),
            ],
            env=clean_env(**otel),
            stderr=subprocess.DEVNULL,
        )
        try:
            with trio.fail_after(60):
                submitted = await _cli(
                    otel,
                    *("submit", "--server", server.url, "--"),
                    *("sh", "-c", "echo telemetry; sleep 2.5"),
                )
                assert submitted.returncode == 0, submitted.stderr
                job_id = submitted.stderr.split(b"job ", 1)[1].split(b" ", 1)[0].decode()
                replayed = await _cli(otel, "monitor", "--server", server.url, job_id)
        finally:
            # A stopped worker flushes what it recorded.
            worker.send_signal(signal.SIGTERM)
            with trio.move_on_after(20):
                await worker.wait()
            if worker.returncode is None:
                worker.kill()
                await worker.wait()
    return submitted, replayed


@pytest.mark.aws
@pytest.mark.e2e
async def test_a_job_is_one_trace_from_submit_to_completion(
    receiver: OtlpReceiver, sqs_env: dict[str, str], tmp_path: Path
) -> None:
    submitted, replayed = await _run_one_job(sqs_env, _otel_env(receiver.url), tmp_path)
    assert submitted.stdout == b"telemetry\n"
    assert replayed.stdout == b"telemetry\n"
    with trio.fail_after(30):
        await eventually(
            lambda: (
                any(s.name == "execute job" for s in receiver.spans)
                and any(s.name == "airunner-cli submit" for s in receiver.spans)
            )
        )

    (root,) = [s for s in receiver.spans_of("airunner-cli") if s.name == "airunner-cli submit"]
    story = [s for s in receiver.spans if s.trace_id == root.trace_id]
    names = {(s.service, s.name) for s in story}
    # The submitter's calls, the server's handling of them, and the worker's execution.
    assert ("airunner-cli", "job.v1.JobService/EnqueueJob") in names
    assert ("airunner-server", "job.v1.JobService/EnqueueJob") in names
    assert ("airunner-server", "DynamoDB/TransactWriteItems") in names
    assert ("airunner-server", "SQS/SendMessage") in names
    for step in ("execute job", "checkout", "run command", "complete job"):
        assert ("airunner-worker", step) in names, step
    assert ("airunner-worker", "job.v1.JobService/CompleteJob") in names
    assert ("airunner-server", "job.v1.JobService/CompleteJob") in names
    assert ("airunner-server", "job.v1.JobEventsService/PublishJobEvents") in names

    # Parents: the worker's execution hangs under the server's EnqueueJob span,
    # which hangs under the CLI's call.
    by_id = {s.span.span_id: s for s in story}
    execution = next(s for s in story if s.name == "execute job")
    enqueue = by_id[execution.span.parent_span_id]
    assert (enqueue.service, enqueue.name) == ("airunner-server", "job.v1.JobService/EnqueueJob")
    assert by_id[enqueue.span.parent_span_id].service == "airunner-cli"
    assert execution.attributes["process.exit.code"] == 0
    aws = next(s for s in story if s.name == "DynamoDB/TransactWriteItems")
    assert aws.span.kind == Span.SpanKind.SPAN_KIND_CLIENT
    assert aws.attributes["rpc.system"] == "aws-api"
    assert by_id[aws.span.parent_span_id].name == "job.v1.JobService/EnqueueJob"

    # The event writer stores many jobs' events in one call: that call's span
    # links to each publisher's.
    publishes = {
        s.span.span_id for s in story if s.name == "job.v1.JobEventsService/PublishJobEvents"
    }
    writes = [s for s in receiver.spans_of("airunner-server") if s.name == "store events"]
    assert any(publishes & {link.span_id for link in s.span.links} for s in writes)
    write_ids = {s.span.span_id for s in writes}
    assert any(
        s.name == "DynamoDB/BatchWriteItem" and s.span.parent_span_id in write_ids
        for s in receiver.spans
    )

    # RPC spans of the server are server spans; the worker's polls are spans too.
    polls = [s for s in receiver.spans_of("airunner-server") if s.name.endswith("/DequeueJob")]
    assert polls
    assert all(s.span.kind == Span.SpanKind.SPAN_KIND_SERVER for s in polls)


@pytest.mark.aws
@pytest.mark.e2e
async def test_metrics_arrive_with_bounded_attributes(
    receiver: OtlpReceiver, sqs_env: dict[str, str], tmp_path: Path
) -> None:
    await _run_one_job(sqs_env, _otel_env(receiver.url), tmp_path)
    expected = {
        "airunner.jobs.enqueued.total": {"queue": "default"},
        "airunner.jobs.dequeued.total": {"queue": "default"},
        "airunner.jobs.completed.total": {"queue": "default", "state": "COMPLETED"},
        "airunner.jobs.visibility_updates.total": {"queue": "default"},
        "airunner.events.publish.total": {"queue": "default"},
        "airunner.events.persisted.total": {"queue": "default"},
        "airunner.events.publish.duration": {},
        "airunner.streams.active": {},
        "airunner.streams.historical_replay.duration": {},
        "airunner.streams.historical_replay.events.total": {},
        "airunner.dynamodb.operations.total": {"operation": "TransactWriteItems"},
    }
    with trio.fail_after(30):
        await eventually(lambda: all(receiver.metric(name) for name in expected))
    for name, attributes in expected.items():
        assert attributes in receiver.metric(name), (name, receiver.metric(name))
    for point in receiver.points:
        if point.metric.startswith("airunner."):
            assert set(point.attributes) <= BOUNDED_ATTRIBUTES, point
            assert point.service == "airunner-server", point


def test_telemetry_is_off_without_an_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    threads = threading.active_count()
    provider = trace.get_tracer_provider()
    with telemetry.enabled("airunner-test") as on:
        assert on is False
        assert threading.active_count() == threads
        assert trace.get_tracer_provider() is provider
        with telemetry.tracer.start_as_current_span("nothing") as span:
            assert not span.is_recording()


@pytest.mark.e2e
async def test_an_endpoint_that_answers_nothing_changes_no_outcome(tmp_path: Path) -> None:
    with socket.socket() as silent:
        # It listens, and never reads or answers.
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with trio.fail_after(120):
            submitted, replayed = await _run_one_job({}, _otel_env(endpoint), tmp_path)
    assert submitted.returncode == 0, submitted.stderr
    assert submitted.stdout == b"telemetry\n"
    assert replayed.stdout == b"telemetry\n"
    assert b"Traceback" not in submitted.stderr
