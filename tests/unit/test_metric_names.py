"""Every metric docs/ARCHITECTURE.md names is an instrument airunner records."""

from __future__ import annotations

from airunner.telemetry import _instruments

# docs/ARCHITECTURE.md, "Telemetry".
DESIGN_METRICS = {
    "airunner.jobs.enqueued.total",
    "airunner.jobs.dequeued.total",
    "airunner.jobs.completed.total",
    "airunner.jobs.visibility_updates.total",
    "airunner.jobs.redelivered.total",
    "airunner.events.publish.total",
    "airunner.events.publish.errors.total",
    "airunner.events.publish.duration",
    "airunner.events.persisted.total",
    "airunner.events.dropped.total",
    "airunner.streams.active",
    "airunner.streams.historical_replay.duration",
    "airunner.streams.historical_replay.events.total",
    "airunner.dynamodb.operations.total",
    "airunner.dynamodb.throttles.total",
    "airunner.dynamodb.batch_retries.total",
    "airunner.channels.overflow.total",
}


def test_every_designed_metric_has_an_instrument() -> None:
    names = set()
    for value in vars(_instruments).values():
        name = getattr(value, "name", None) or getattr(value, "_name", None)
        if isinstance(name, str) and name.startswith("airunner."):
            names.add(name)
    assert names >= DESIGN_METRICS, DESIGN_METRICS - names
