"""The server's long-lived tasks. Each actor has one job and one file:

- ``HttpFront``: serves the ASGI app with Hypercorn; drains on shutdown.
- ``VisibilitySweeper``: returns expired deliveries of the memory store to their queue.
- ``QueuePoller`` (sqs, one per queue): long-polls SQS while dequeuers wait.
- ``DeadLetterReader`` (sqs, one per dead-letter queue): ends or sends back what lands there.
- ``VisibilityExtender`` (sqs, one per queue): visibility changes in batch calls.
- ``EventWriter`` (sqs): events of all jobs in BatchWriteItem calls.
- ``EventTail`` (sqs): wakes subscribers when another replica stores news of their job.

``supervise`` runs an actor and applies its crash policy. The actors know the
AWS services' limits, not airunner's tables: the store gives them what they
write and how to read.
"""

from __future__ import annotations

from ._actor import Actor
from ._batch_call import AwsCallFailed
from ._dead_letter_reader import DeadLetterReader
from ._event_tail import DEFAULT_PACE as DEFAULT_TAIL_PACE
from ._event_tail import EventTail, TailPace
from ._event_writer import EventWriter
from ._http_front import HttpFront
from ._queue_poller import QueuePoller, take_first
from ._receiver import Received
from ._supervisor import RESTART_BACKOFF_INITIAL, supervise
from ._visibility_extender import VisibilityExtender
from ._visibility_sweeper import ExpiringDeliveries, VisibilitySweeper

__all__ = [
    "DEFAULT_TAIL_PACE",
    "RESTART_BACKOFF_INITIAL",
    "Actor",
    "AwsCallFailed",
    "DeadLetterReader",
    "EventTail",
    "EventWriter",
    "ExpiringDeliveries",
    "HttpFront",
    "QueuePoller",
    "Received",
    "TailPace",
    "VisibilityExtender",
    "VisibilitySweeper",
    "supervise",
    "take_first",
]
