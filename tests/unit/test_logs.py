"""Log lines: text for people, JSON lines for CloudWatch, trace ids on both."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider

from airunner.telemetry import configure_logging


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _log_in_a_span(stream: io.StringIO) -> tuple[str, str]:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("work") as span:
        logging.getLogger("airunner.test").info("inside %s", "a span")
        context = span.get_span_context()
    logging.getLogger("airunner.test").warning("outside")
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def test_json_lines_carry_trace_and_span_ids() -> None:
    stream = io.StringIO()
    configure_logging("json", stream=stream)
    trace_id, span_id = _log_in_a_span(stream)
    inside, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert inside["message"] == "inside a span"
    assert inside["level"] == "INFO"
    assert inside["logger"] == "airunner.test"
    assert (inside["trace_id"], inside["span_id"]) == (trace_id, span_id)
    assert inside["time"].endswith("+00:00")
    assert outside["level"] == "WARNING"
    assert "trace_id" not in outside


def test_text_lines_for_people_with_ids_inside_a_span() -> None:
    stream = io.StringIO()
    configure_logging("text", stream=stream)
    trace_id, span_id = _log_in_a_span(stream)
    inside, outside = stream.getvalue().splitlines()
    assert inside.endswith(f"INFO airunner.test: inside a span [trace {trace_id} span {span_id}]")
    assert outside.endswith("WARNING airunner.test: outside")


def test_auto_is_json_when_not_a_terminal() -> None:
    stream = io.StringIO()
    configure_logging("auto", stream=stream)
    logging.getLogger("airunner.test").info("hello")
    assert json.loads(stream.getvalue())["message"] == "hello"


def test_exceptions_stay_in_one_json_line() -> None:
    stream = io.StringIO()
    configure_logging("json", stream=stream)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("airunner.test").exception("failed")
    (line,) = stream.getvalue().splitlines()
    assert "RuntimeError: boom" in json.loads(line)["exception"]
