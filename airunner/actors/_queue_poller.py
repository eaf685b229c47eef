"""QueuePoller: long-polls one SQS queue while dequeuers wait, and hands messages to them."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from airunner.wakeup import Wakeup

from ._receiver import Received, Receiver

if TYPE_CHECKING:
    from types_aiobotocore_sqs import SQSClient

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Waiter:
    arrived: trio.Event = field(default_factory=trio.Event)
    received: Received | None = None


class QueuePoller:
    """One queue's receiver. ``take`` waits for a message; ``run`` fetches them.

    It polls only while somebody waits, asks for no more messages than there are
    waiters, and gives a message nobody is left to take to ``give_back``. A poll
    in flight is never cancelled: SQS (and moto) would keep it running and hide
    the next message until its visibility ran out. A failed receive is logged
    and tried again after a backoff; the waiters keep waiting.

    Waiters queue in a deque, not a memory channel: a waiter that is cancelled
    must leave the line at once, so that the next poll asks for no message
    nobody will take (SQS counts every receive towards the dead-letter limit),
    and a request already sent into a channel cannot be taken back.

    Args:
        sqs: The client.
        queue: The queue's name, for logs and metrics.
        url: The queue's URL.
        hold_seconds: The visibility timeout of a received message until the
            store decides what to do with it.
        give_back: Returns a message nobody took to the queue (the store's
            choice of how); its errors are logged.
    """

    restartable = True

    def __init__(
        self,
        sqs: SQSClient,
        queue: str,
        url: str,
        *,
        hold_seconds: int,
        give_back: Callable[[Received], Awaitable[None]],
    ) -> None:
        self.name = f"queue poller ({queue})"
        self.queue = queue
        self.url = url
        self._sqs = sqs
        self._hold_seconds = hold_seconds
        self._give_back = give_back
        self._waiters: deque[_Waiter] = deque()
        self._wanted = Wakeup()
        self._returns: trio.Nursery | None = None

    async def take(self) -> Received:
        """The next message of the queue, as soon as one arrives.

        Cancellation:
            Safe: a waiter cancelled before a message reached it takes none; one
            that reached it in the same instant is given back.
        """
        waiter = _Waiter()
        self._waiters.append(waiter)
        self._wanted.wake()
        try:
            await waiter.arrived.wait()
        except BaseException:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            elif waiter.received is not None:
                self.give_back_soon(waiter.received)
            raise
        assert waiter.received is not None
        return waiter.received

    def give_back_soon(self, received: Received) -> None:
        """Give ``received`` back in the background (from a task being cancelled, say)."""
        if self._returns is not None:
            self._returns.start_soon(self._give_back_quietly, received)

    async def _give_back_quietly(self, received: Received) -> None:
        try:
            await self._give_back(received)
        except Exception as e:
            # It comes back anyway once its hold runs out.
            log.warning("could not give back a message of %s: %s", self.name, e)

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        receiver = Receiver(self._sqs, self.url, self.name)
        async with trio.open_nursery() as returns:
            self._returns = returns
            try:
                await self._poll(receiver)
            finally:
                self._returns = None

    async def _poll(self, receiver: Receiver) -> None:
        while True:
            while not self._waiters:
                await self._wanted.wait()
            for received in await receiver.receive(len(self._waiters), self._hold_seconds):
                if self._waiters:
                    waiter = self._waiters.popleft()
                    waiter.received = received
                    waiter.arrived.set()
                else:
                    self.give_back_soon(received)
