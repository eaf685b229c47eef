"""DeadLetterReader: hands every message that reaches a dead-letter queue to the store."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio
from botocore.exceptions import BotoCoreError, ClientError

from ._queue_poller import (
    BACKOFF_INITIAL_SECONDS,
    BACKOFF_MAX_SECONDS,
    MAX_MESSAGES,
    WAIT_SECONDS,
    Received,
)

if TYPE_CHECKING:
    from types_aiobotocore_sqs import SQSClient

log = logging.getLogger(__name__)

# A dead letter being handled is hidden this long; one whose handling failed
# comes back after it.
HOLD_SECONDS = 60


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
        backoff = BACKOFF_INITIAL_SECONDS
        while True:
            try:
                response = await self._sqs.receive_message(
                    QueueUrl=self._url,
                    MaxNumberOfMessages=MAX_MESSAGES,
                    WaitTimeSeconds=WAIT_SECONDS,
                    VisibilityTimeout=HOLD_SECONDS,
                    MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
                )
            except (ClientError, BotoCoreError) as e:
                log.warning("%s: receive failed (%s); again in %.0f s", self.name, e, backoff)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)
                continue
            backoff = BACKOFF_INITIAL_SECONDS
            for message in response.get("Messages", []):
                try:
                    await self._handle(self._url, Received(message))
                except Exception as e:
                    log.warning("%s: could not handle a message (%s); it comes back", self.name, e)
