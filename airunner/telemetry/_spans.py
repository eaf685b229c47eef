"""Spans of work done for many callers at once (a batch call)."""

from __future__ import annotations

from collections.abc import Iterable

from opentelemetry import trace


def current_span_context() -> trace.SpanContext:
    """The span context of the caller, for a batch span to link to later."""
    return trace.get_current_span().get_span_context()


def links(origins: Iterable[trace.SpanContext]) -> list[trace.Link]:
    """One link per distinct valid span context: a batch call's span links to
    the spans of every caller it serves."""
    distinct = {(o.trace_id, o.span_id): o for o in origins if o.is_valid}
    return [trace.Link(origin) for origin in distinct.values()]
