"""Job stores: the JobStore contract, its rules, and the in-memory store.

The SQS/DynamoDB store is the subpackage ``airunner.store.sqs``; importing this
package does not import it (nor the AWS libraries it needs).
"""

from __future__ import annotations

from . import rules
from ._contract import (
    FINAL_STATES,
    TERMINAL_EVENT_TYPES,
    Delivery,
    EventQuery,
    EventStream,
    JobPage,
    JobStore,
    event_time_ms,
    last_sequence_of,
    process_error_event,
    rebased,
)
from ._errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    StaleTaskToken,
    StoreError,
    Unavailable,
)
from ._ids import new_job_id
from ._memory import (
    DEFAULT_FINISHED_JOB_TTL_SECONDS,
    DEFAULT_MAX_FINISHED_JOBS,
    DEFAULT_MAX_FINISHED_OUTPUT_BYTES,
    DEFAULT_QUEUES,
    MemoryJobStore,
)
from ._tokens import TaskToken, TaskTokenSigner

__all__ = [
    "DEFAULT_FINISHED_JOB_TTL_SECONDS",
    "DEFAULT_MAX_FINISHED_JOBS",
    "DEFAULT_MAX_FINISHED_OUTPUT_BYTES",
    "DEFAULT_QUEUES",
    "FINAL_STATES",
    "TERMINAL_EVENT_TYPES",
    "Delivery",
    "EventQuery",
    "EventStream",
    "FailedPrecondition",
    "InvalidArgument",
    "JobPage",
    "JobStore",
    "MemoryJobStore",
    "NotFound",
    "ResourceExhausted",
    "StaleTaskToken",
    "StoreError",
    "TaskToken",
    "TaskTokenSigner",
    "Unavailable",
    "event_time_ms",
    "last_sequence_of",
    "new_job_id",
    "process_error_event",
    "rebased",
    "rules",
]
