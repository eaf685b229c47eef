"""Drain: how the server tells open long polls and streams that it is stopping."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import trio


class Drain:
    """A one-way switch from serving to draining.

    Long polls and event streams wait inside ``cancel_on_drain()`` so that they
    end at once when draining begins, instead of holding the shutdown for the
    whole grace period.
    """

    def __init__(self) -> None:
        self._event = trio.Event()
        self._scopes: set[trio.CancelScope] = set()

    @property
    def draining(self) -> bool:
        return self._event.is_set()

    def begin(self) -> None:
        self._event.set()
        for scope in self._scopes:
            scope.cancel()

    async def wait(self) -> None:
        await self._event.wait()

    @contextmanager
    def cancel_on_drain(self) -> Iterator[trio.CancelScope]:
        """A cancel scope that is cancelled when draining begins (or already has)."""
        with trio.CancelScope() as scope:
            if self.draining:
                scope.cancel()
            self._scopes.add(scope)
            try:
                yield scope
            finally:
                self._scopes.discard(scope)
