"""Errors a store raises; the HTTP front maps each to its Connect code."""

from __future__ import annotations


class StoreError(Exception):
    """A failure the caller can be told about. The message is safe to show a client."""


class InvalidArgument(StoreError):
    """Bad input: a missing field, a value out of range, a stale or tampered task token."""


class StaleTaskToken(InvalidArgument):
    """The task token's delivery is over: it expired, or the job was released or finished."""

    def __init__(self) -> None:
        super().__init__(
            "task token is no longer current: its delivery expired or the job finished"
        )


class NotFound(StoreError):
    """The job named by the request does not exist."""


class FailedPrecondition(StoreError):
    """The job is not in a state the call applies to (cancelling a job that has ended)."""


class ResourceExhausted(StoreError):
    """A limit was hit: backend throttling after retries, or a subscriber that fell behind."""


class Unavailable(StoreError):
    """The backend could not be reached after retries."""
