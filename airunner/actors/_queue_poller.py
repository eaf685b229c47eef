"""QueuePoller: long-polls one SQS queue while dequeuers wait, and hands messages to them."""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio
from botocore.exceptions import BotoCoreError, ClientError

from airunner.wakeup import Wakeup

if TYPE_CHECKING:
    from types_aiobotocore_sqs import SQSClient
    from types_aiobotocore_sqs.type_defs import MessageTypeDef

log = logging.getLogger(__name__)

# SQS's longest long poll.
WAIT_SECONDS = 20
# One ReceiveMessage returns at most this many messages.
MAX_MESSAGES = 10
# How long a received message stays ours while it is handed to a dequeuer; the
# store then sets the dequeuer's own visibility timeout.
HOLD_SECONDS = 30


@dataclass(eq=False)
class _Waiter:
    arrived: trio.Event = field(default_factory=trio.Event)
    message: MessageTypeDef | None = None


class QueuePoller:
    """One queue's receiver. ``take`` waits for a message; ``run`` fetches them.

    It polls only while somebody waits, asks for no more messages than there are
    waiters, and releases (visibility 0) a message nobody is left to take. A poll
    in flight is never cancelled: SQS (and moto) would keep it running and hide
    the next message until its visibility ran out.

    Waiters queue in a deque, not a memory channel: a waiter that is cancelled
    must leave the line at once, so that the next poll asks for no message
    nobody will take (SQS counts every receive towards the dead-letter limit),
    and a request already sent into a channel cannot be taken back.
    """

    restartable = True

    def __init__(self, sqs: SQSClient, queue: str, url: str) -> None:
        self.name = f"queue poller ({queue})"
        self.queue = queue
        self.url = url
        self._sqs = sqs
        self._waiters: deque[_Waiter] = deque()
        self._wanted = Wakeup()
        self._releases: trio.Nursery | None = None

    async def take(self) -> MessageTypeDef:
        """The next message of the queue, as soon as one arrives.

        Cancellation:
            Safe: a waiter cancelled before a message reached it takes none.
        """
        waiter = _Waiter()
        self._waiters.append(waiter)
        self._wanted.wake()
        try:
            await waiter.arrived.wait()
        except BaseException:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            elif waiter.message is not None:
                # Handed over in the instant this waiter was cancelled.
                self.release_soon(waiter.message)
            raise
        assert waiter.message is not None
        return waiter.message

    def release_soon(self, message: MessageTypeDef) -> None:
        """Release ``message`` in the background (from a task being cancelled, say)."""
        if self._releases is not None:
            self._releases.start_soon(self._release_quietly, message)

    async def _release_quietly(self, message: MessageTypeDef) -> None:
        try:
            await self.release(message)
        except (BotoCoreError, ClientError) as e:
            # It comes back anyway once its hold runs out.
            log.warning("could not release a message of %s: %s", self.name, e)

    async def release(self, message: MessageTypeDef) -> None:
        """Make a received message visible to the next receive at once."""
        await self._sqs.change_message_visibility(
            QueueUrl=self.url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
        )

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async with trio.open_nursery() as releases:
            self._releases = releases
            while True:
                while not self._waiters:
                    await self._wanted.wait()
                response = await self._sqs.receive_message(
                    QueueUrl=self.url,
                    MaxNumberOfMessages=min(MAX_MESSAGES, len(self._waiters)),
                    WaitTimeSeconds=WAIT_SECONDS,
                    VisibilityTimeout=HOLD_SECONDS,
                )
                for message in response.get("Messages", []):
                    if self._waiters:
                        waiter = self._waiters.popleft()
                        waiter.message = message
                        waiter.arrived.set()
                    else:
                        self.release_soon(message)
