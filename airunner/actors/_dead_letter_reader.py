"""DeadLetterReader: hands every message that reaches a dead-letter queue to the store."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from ._receiver import MAX_MESSAGES, Received, Receiver

if TYPE_CHECKING:
    from types_aiobotocore_sqs import SQSClient

log = logging.getLogger(__name__)

# A dead letter being handled is hidden this long; one whose handling failed
# comes back after it. (One taken by a replica that died in its long poll is
# hidden this long too.)
HOLD_SECONDS = 15


class DeadLetterReader:
    """Long-polls one dead-letter queue, always, and calls ``handle`` per message.

    SQS moves a message there after the source queue's ``maxReceiveCount``
    receives; without a reader its job would wait for ever. ``handle`` decides
    (the store fails the job, or sends it back) and deletes the message; a
    message it fails on comes back after ``HOLD_SECONDS``. Costs a long poll
    every 20 s per queue.
    """

    restartable = True

    def __init__(
        self,
        sqs: SQSClient,
        queue: str,
        url: str,
        handle: Callable[[str, Received], Awaitable[None]],
    ) -> None:
        self.name = f"dead-letter reader ({queue})"
        self._sqs = sqs
        self._url = url
        self._handle = handle

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        receiver = Receiver(self._sqs, self._url, self.name)
        while True:
            for received in await receiver.receive(MAX_MESSAGES, HOLD_SECONDS):
                try:
                    await self._handle(self._url, received)
                except Exception as e:
                    log.warning("%s: could not handle a message (%s); it comes back", self.name, e)
