"""The SQS/DynamoDB store: SQS carries deliveries, DynamoDB holds the truth."""

from __future__ import annotations

from ._resources import (
    DEFAULT_EVENTS_TABLE,
    DEFAULT_JOBS_TABLE,
    JOBS_BY_QUEUE_INDEX,
    Resources,
    create_resources,
)
from ._store import SQSJobStore

__all__ = [
    "DEFAULT_EVENTS_TABLE",
    "DEFAULT_JOBS_TABLE",
    "JOBS_BY_QUEUE_INDEX",
    "Resources",
    "SQSJobStore",
    "create_resources",
]
