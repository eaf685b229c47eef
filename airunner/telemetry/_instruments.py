"""The metric instruments airunner records, and its tracer.

They come from the OpenTelemetry API: without an SDK configured (the default)
every instrument is a no-op that costs next to nothing. Attributes stay bounded
(queue, state, operation, reason), never a job id.
"""

from __future__ import annotations

from opentelemetry import metrics, trace

_meter = metrics.get_meter("airunner")
tracer = trace.get_tracer("airunner")

jobs_enqueued = _meter.create_counter(
    "airunner.jobs.enqueued.total", description="Jobs created by EnqueueJob"
)
jobs_dequeued = _meter.create_counter(
    "airunner.jobs.dequeued.total", description="Job deliveries handed to dequeuers"
)
jobs_completed = _meter.create_counter(
    "airunner.jobs.completed.total", description="Jobs finished, by final state"
)
jobs_visibility_updates = _meter.create_counter(
    "airunner.jobs.visibility_updates.total", description="Visibility extensions"
)
jobs_redelivered = _meter.create_counter(
    "airunner.jobs.redelivered.total",
    description="Deliveries of a job that had been delivered before",
)
events_publish = _meter.create_counter(
    "airunner.events.publish.total", description="Events received from publishers"
)
events_publish_errors = _meter.create_counter(
    "airunner.events.publish.errors.total", description="PublishJobEvents calls refused or failed"
)
events_publish_duration = _meter.create_histogram(
    "airunner.events.publish.duration",
    unit="s",
    description="Time to store one PublishJobEvents message's events",
)
events_persisted = _meter.create_counter(
    "airunner.events.persisted.total", description="Events stored (duplicates excluded)"
)
events_dropped = _meter.create_counter(
    "airunner.events.dropped.total", description="Events not delivered to a subscriber"
)
streams_active = _meter.create_up_down_counter(
    "airunner.streams.active", description="Open StreamJobEvents subscriptions"
)
streams_replay_duration = _meter.create_histogram(
    "airunner.streams.historical_replay.duration",
    unit="s",
    description="Time a subscriber took to receive the events stored before it subscribed",
)
streams_replay_events = _meter.create_counter(
    "airunner.streams.historical_replay.events.total",
    description="Events sent to subscribers from history (stored before they subscribed)",
)
channels_overflow = _meter.create_counter(
    "airunner.channels.overflow.total",
    description="Subscriber buffers that overflowed, ending their stream",
)
messages_dropped = _meter.create_counter(
    "airunner.queue.messages.dropped.total",
    description="SQS messages deleted without a delivery: poison, or a finished job",
)
dynamodb_operations = _meter.create_counter(
    "airunner.dynamodb.operations.total", description="DynamoDB API calls, by operation"
)
dynamodb_throttles = _meter.create_counter(
    "airunner.dynamodb.throttles.total",
    description="DynamoDB attempts answered with a throttling error, by operation",
)
dynamodb_batch_retries = _meter.create_counter(
    "airunner.dynamodb.batch_retries.total",
    description="BatchWriteItem calls repeated for unprocessed items",
)
