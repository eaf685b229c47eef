"""Wake-ups: "something changed, look again" for every task waiting at that moment.

A ``trio.Event`` fires once; a wake-up fires as often as things change. A task
that waits after a wake waits for the next one. Take ``next_wake()`` *before*
looking at the state it guards and wait on it after: a wake in between (while
the look awaits) is then not missed.

A memory channel does not fit these cases: it hands each item to one receiver,
and these have any number of waiters, or none, and nothing to hand over.
"""

from __future__ import annotations

from typing import Generic, TypeVar

import trio

K = TypeVar("K")


class Wakeup:
    """Wakes every task waiting on it."""

    def __init__(self) -> None:
        self._next = trio.Event()

    def next_wake(self) -> trio.Event:
        """The event the next ``wake`` sets."""
        return self._next

    def wake(self) -> None:
        self._next.set()
        self._next = trio.Event()

    async def wait(self) -> None:
        """Wait for the next ``wake``.

        Cancellation:
            Safe: nothing is consumed.
        """
        await self._next.wait()


class KeyedWakeup(Generic[K]):
    """A wake-up per key (a job id, say), held only while somebody waits on it."""

    def __init__(self) -> None:
        self._next: dict[K, trio.Event] = {}

    def next_wake(self, key: K) -> trio.Event:
        """The event the next ``wake(key)`` sets."""
        event = self._next.get(key)
        if event is None:
            event = self._next[key] = trio.Event()
        return event

    def wake(self, key: K) -> None:
        event = self._next.pop(key, None)
        if event is not None:
            event.set()

    async def wait(self, key: K) -> None:
        """Wait for the next ``wake(key)``.

        Cancellation:
            Safe: nothing is consumed.
        """
        await self.next_wake(key).wait()
