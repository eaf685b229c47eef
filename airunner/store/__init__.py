"""Job stores: the JobStore contract, its rules, and the stores that keep it."""

from __future__ import annotations

from ._contract import (
    FINAL_STATES,
    TERMINAL_EVENT_TYPES,
    Delivery,
    EventQuery,
    EventStream,
    JobPage,
    JobStore,
    last_sequence_of,
)
from ._errors import InvalidArgument, NotFound, ResourceExhausted, StoreError, Unavailable
from ._memory import DEFAULT_QUEUES, MemoryJobStore
from ._tokens import TaskToken, TaskTokenSigner

__all__ = [
    "DEFAULT_QUEUES",
    "FINAL_STATES",
    "TERMINAL_EVENT_TYPES",
    "Delivery",
    "EventQuery",
    "EventStream",
    "InvalidArgument",
    "JobPage",
    "JobStore",
    "MemoryJobStore",
    "NotFound",
    "ResourceExhausted",
    "StoreError",
    "TaskToken",
    "TaskTokenSigner",
    "Unavailable",
    "last_sequence_of",
]
