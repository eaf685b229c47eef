"""Errors a store raises; the HTTP front maps each to its Connect code."""

from __future__ import annotations


class StoreError(Exception):
    """A failure the caller can be told about. The message is safe to show a client."""


class InvalidArgument(StoreError):
    """Bad input: a missing field, a value out of range, a stale or tampered task token."""


class NotFound(StoreError):
    """The job named by the request does not exist."""


class ResourceExhausted(StoreError):
    """A limit was hit: backend throttling after retries, or a subscriber that fell behind."""


class Unavailable(StoreError):
    """The backend could not be reached after retries."""
