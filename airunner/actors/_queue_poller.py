"""QueuePoller: long-polls one SQS queue while dequeuers wait, and hands messages to them.

A dequeuer of several queues waits on each of their pollers at once (``take_first``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
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
    """One dequeuer, waiting on the pollers of its queues; the first message that
    any of them hands it fills it, and it leaves them all at once."""

    # The pollers of its queues, in the dequeuer's order.
    pollers: Sequence[QueuePoller]
    arrived: trio.Event = field(default_factory=trio.Event)
    received: Received | None = None
    # The poller whose message filled it.
    filled_by: QueuePoller | None = None

    def fill(self, poller: QueuePoller, received: Received) -> None:
        self.received = received
        self.filled_by = poller
        self.leave()
        self.arrived.set()

    def leave(self) -> None:
        for poller in self.pollers:
            poller._leave(self)


async def take_first(pollers: Sequence[QueuePoller]) -> tuple[QueuePoller, Received]:
    """The next message of any of the pollers' queues, and the poller it came from.

    The waiter joins every poller at once; whichever receives a message for it
    first fills it. A poller hands each message it receives to the waiter that
    ranks its queue highest (a waiter of this queue alone before one for whom it
    is a fallback), so earlier queues are preferred roughly, never waited for.

    Cancellation:
        Safe: a waiter cancelled before a message reached it takes none; one
        that reached it in the same instant is given back.
    """
    waiter = _Waiter(pollers)
    for rank, poller in enumerate(pollers):
        poller._join(waiter, rank)
    try:
        await waiter.arrived.wait()
    except BaseException:
        waiter.leave()
        if waiter.filled_by is not None and waiter.received is not None:
            waiter.filled_by.give_back_soon(waiter.received)
        raise
    assert waiter.filled_by is not None
    assert waiter.received is not None
    return waiter.filled_by, waiter.received


class QueuePoller:
    """One queue's receiver. ``take`` waits for a message; ``run`` fetches them.

    It polls only while somebody waits, asks for no more messages than there are
    waiters, and gives a message nobody is left to take to ``give_back``. A poll
    in flight is never cancelled: SQS (and moto) would keep it running and hide
    the next message until its visibility ran out. A failed receive is logged
    and tried again after a backoff; the waiters keep waiting.

    Waiters queue in a list, not a memory channel: a waiter that is cancelled,
    or filled by another queue's poller, must leave the line at once, so that
    the next poll asks for no message nobody will take (SQS counts every
    receive towards the dead-letter limit), and a request already sent into a
    channel cannot be taken back.

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
        # Each waiter with the rank of this queue in its list (0: its first).
        self._waiters: dict[_Waiter, int] = {}
        self._wanted = Wakeup()
        self._returns: trio.Nursery | None = None

    async def take(self) -> Received:
        """The next message of the queue, as soon as one arrives (``take_first``
        of this poller alone)."""
        _, received = await take_first([self])
        return received

    def _join(self, waiter: _Waiter, rank: int) -> None:
        self._waiters[waiter] = rank
        self._wanted.wake()

    def _leave(self, waiter: _Waiter) -> None:
        self._waiters.pop(waiter, None)

    def _next_waiter(self) -> _Waiter | None:
        """The waiter to hand a message to: the best rank, then the longest waiting."""
        if not self._waiters:
            return None
        # Dicts keep insertion order, and min keeps the first of equals.
        return min(self._waiters, key=self._waiters.__getitem__)

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
            # Waiters filled by another queue's poller meanwhile have left.
            for received in await receiver.receive(len(self._waiters), self._hold_seconds):
                waiter = self._next_waiter()
                if waiter is not None:
                    waiter.fill(self, received)
                else:
                    self.give_back_soon(received)
