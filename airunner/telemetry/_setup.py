"""The OpenTelemetry SDK with OTLP/HTTP exporters, installed only when an endpoint is set."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

# Any of these turns telemetry on; the exporters read them (and
# OTEL_EXPORTER_OTLP_HEADERS) themselves.
ENDPOINT_VARIABLES = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
)
# One export gives up after this long (unless OTEL_EXPORTER_OTLP_TIMEOUT says
# otherwise). Exports run in the SDK's own threads: a slow or silent endpoint
# delays nothing but them, and the process's exit by about this much.
EXPORT_TIMEOUT_SECONDS = 5.0


@contextmanager
def enabled(service_name: str) -> Iterator[bool]:
    """Export traces and metrics over OTLP/HTTP for as long as the context lasts.

    Without an endpoint in the environment (or with ``OTEL_SDK_DISABLED=true``)
    nothing is installed: no SDK, no exporter threads; the API stays a no-op.
    On exit, what was recorded is flushed. The service name is
    ``OTEL_SERVICE_NAME`` (or ``service.name`` in ``OTEL_RESOURCE_ATTRIBUTES``),
    else ``service_name``.

    Yields:
        Whether telemetry is on.
    """
    disabled = os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
    if disabled or not any(os.environ.get(name) for name in ENDPOINT_VARIABLES):
        yield False
        return
    # Imported here: a process without telemetry does not load the SDK at all.
    from opentelemetry import metrics, trace
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    timeout = None if os.environ.get("OTEL_EXPORTER_OTLP_TIMEOUT") else EXPORT_TIMEOUT_SECONDS
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(timeout=timeout)))
    meter_provider = MeterProvider(
        resource=resource,
        metric_readers=[PeriodicExportingMetricReader(OTLPMetricExporter(timeout=timeout))],
    )
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
    log.info(
        "telemetry on: exporting traces and metrics of %s over OTLP/HTTP",
        resource.attributes[SERVICE_NAME],
    )
    try:
        yield True
    finally:
        tracer_provider.shutdown()
        meter_provider.shutdown()
