"""Receiver: long polls of one SQS queue, for the actors that read queues."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio
from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:
    from types_aiobotocore_sqs import SQSClient
    from types_aiobotocore_sqs.type_defs import MessageTypeDef

log = logging.getLogger(__name__)

# SQS's longest long poll.
WAIT_SECONDS = 20
# One ReceiveMessage returns at most this many messages.
MAX_MESSAGES = 10
# After a failed receive the next waits this long, doubling to the maximum, so
# that an AWS outage costs a call every half minute, not a busy loop.
BACKOFF_INITIAL_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 30.0


@dataclass(frozen=True)
class Received:
    """A message as it was received."""

    message: MessageTypeDef

    @property
    def receive_count(self) -> int:
        """Times SQS handed this message out, this one included."""
        return int(self.message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))

    @property
    def sent_ms(self) -> int:
        """Unix milliseconds when the message was sent."""
        return int(self.message.get("Attributes", {}).get("SentTimestamp", "0"))


class Receiver:
    """Receives from one queue, with the attributes the store needs, riding out failures."""

    def __init__(self, sqs: SQSClient, url: str, name: str) -> None:
        self._sqs = sqs
        self._url = url
        self._name = name
        self._backoff = BACKOFF_INITIAL_SECONDS

    async def receive(self, count: int, hold_seconds: int) -> list[Received]:
        """One long poll for up to ``count`` messages, hidden ``hold_seconds`` once received.

        A failed poll is logged and returns nothing after a backoff.

        Cancellation:
            Never cancel a poll in flight: SQS would go on with it and hide the
            next message until its hold ran out.
        """
        try:
            response = await self._sqs.receive_message(
                QueueUrl=self._url,
                MaxNumberOfMessages=min(MAX_MESSAGES, count),
                WaitTimeSeconds=WAIT_SECONDS,
                VisibilityTimeout=hold_seconds,
                MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
            )
        except (ClientError, BotoCoreError) as e:
            log.warning("%s: receive failed (%s); again in %.0f s", self._name, e, self._backoff)
            await trio.sleep(self._backoff)
            self._backoff = min(self._backoff * 2, BACKOFF_MAX_SECONDS)
            return []
        self._backoff = BACKOFF_INITIAL_SECONDS
        return [Received(message) for message in response.get("Messages", [])]
