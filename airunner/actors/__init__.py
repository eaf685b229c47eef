"""The server's long-lived tasks. Each actor has one job and one file:

- ``HttpFront``: serves the ASGI app with Hypercorn; drains on shutdown.
- ``VisibilitySweeper``: returns expired deliveries of the memory store to their queue.
- ``QueuePoller`` (sqs, one per queue): long-polls SQS while dequeuers wait.
- ``VisibilityExtender`` (sqs, one per queue): visibility changes in batch calls.
- ``EventWriter`` (sqs): events of all jobs in BatchWriteItem calls.
- ``EventTail`` (sqs): wakes subscribers when another replica stores news of their job.

``supervise`` runs an actor and applies its crash policy.
"""

from __future__ import annotations

from ._actor import Actor
from ._http_front import HttpFront
from ._supervisor import supervise
from ._visibility_sweeper import ExpiringDeliveries, VisibilitySweeper

__all__ = ["Actor", "ExpiringDeliveries", "HttpFront", "VisibilitySweeper", "supervise"]
