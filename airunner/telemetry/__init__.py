"""Telemetry: metric instruments, the tracer, the OTLP setup, log formats.

Instruments and the tracer come from the OpenTelemetry API: until ``enabled``
installs the SDK (only when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set) they are
no-ops that cost next to nothing.
"""

from ._instruments import (
    channels_overflow,
    dynamodb_batch_retries,
    dynamodb_operations,
    dynamodb_throttles,
    events_dropped,
    events_persisted,
    events_publish,
    events_publish_duration,
    events_publish_errors,
    jobs_completed,
    jobs_dequeued,
    jobs_enqueued,
    jobs_redelivered,
    jobs_visibility_updates,
    messages_dropped,
    streams_active,
    streams_replay_duration,
    streams_replay_events,
    tracer,
)
from ._logs import LOG_FORMATS, add_log_format_option, configure_logging
from ._setup import enabled
from ._spans import current_span_context, links

__all__ = [
    "LOG_FORMATS",
    "add_log_format_option",
    "channels_overflow",
    "configure_logging",
    "current_span_context",
    "dynamodb_batch_retries",
    "dynamodb_operations",
    "dynamodb_throttles",
    "enabled",
    "events_dropped",
    "events_persisted",
    "events_publish",
    "events_publish_duration",
    "events_publish_errors",
    "jobs_completed",
    "jobs_dequeued",
    "jobs_enqueued",
    "jobs_redelivered",
    "jobs_visibility_updates",
    "links",
    "messages_dropped",
    "streams_active",
    "streams_replay_duration",
    "streams_replay_events",
    "tracer",
]
