"""Log lines for people (a terminal) or for CloudWatch Logs Insights (JSON, one per line)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from opentelemetry import trace

LOG_FORMATS = ("auto", "text", "json")
# Libraries that log a line per request; their failures reach us as errors.
_CHATTY = ("httpx", "httpx2", "botocore", "aiobotocore", "urllib3", "hpack")


class _TraceIds(logging.Filter):
    """Adds the current span's trace and span ids to each record (empty outside a span)."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        record.trace_id = format(context.trace_id, "032x") if context.is_valid else ""
        record.span_id = format(context.span_id, "016x") if context.is_valid else ""
        return True


class _Text(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        trace_id = getattr(record, "trace_id", "")
        if trace_id:
            line += f" [trace {trace_id} span {getattr(record, 'span_id', '')}]"
        return line


class _JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        trace_id = getattr(record, "trace_id", "")
        if trace_id:
            entry["trace_id"] = trace_id
            entry["span_id"] = getattr(record, "span_id", "")
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def add_log_format_option(parser: argparse.ArgumentParser) -> None:
    """``--log-format`` (env AIRUNNER_LOG_FORMAT): auto, text or json."""
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=os.environ.get("AIRUNNER_LOG_FORMAT") or "auto",
        help="log lines as text or as one JSON object per line (env AIRUNNER_LOG_FORMAT; "
        "default auto: text on a terminal, JSON otherwise)",
    )


def configure_logging(log_format: str = "auto", *, stream: TextIO | None = None) -> None:
    """Send INFO and above to ``stream`` (stderr): text on a terminal, else JSON lines.

    Args:
        log_format: "text", "json", or "auto" (text when the stream is a terminal).
    """
    stream = stream if stream is not None else sys.stderr
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}")
    as_json = log_format == "json" or (log_format == "auto" and not stream.isatty())
    handler = logging.StreamHandler(stream)
    handler.addFilter(_TraceIds())
    handler.setFormatter(_JsonLines() if as_json else _Text())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    for name in _CHATTY:
        logging.getLogger(name).setLevel(logging.WARNING)
