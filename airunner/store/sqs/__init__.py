"""The SQS/DynamoDB store: SQS carries deliveries, DynamoDB holds jobs and events.

Modules: ``_store`` the JobStore; ``_jobs`` the job lifecycle; ``_events``
events and subscribers; ``_schema`` the tables and their items; ``_aws_errors``
AWS failures as store errors; ``_resources`` creating the queues and tables.
"""

from __future__ import annotations

from ._jobs import QueueUnusable
from ._resources import QUEUE_NAMES, Resources, create_resources, queue_names
from ._schema import DEFAULT_EVENTS_TABLE, DEFAULT_JOBS_TABLE, EVENTS_KEY, JOBS_BY_QUEUE_INDEX
from ._store import SQSJobStore

__all__ = [
    "DEFAULT_EVENTS_TABLE",
    "DEFAULT_JOBS_TABLE",
    "EVENTS_KEY",
    "JOBS_BY_QUEUE_INDEX",
    "QUEUE_NAMES",
    "QueueUnusable",
    "Resources",
    "SQSJobStore",
    "create_resources",
    "queue_names",
]
