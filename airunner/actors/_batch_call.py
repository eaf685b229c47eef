"""What the batching actors share: a request that waits for its share of a batch call."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import trio
from botocore.exceptions import BotoCoreError, ClientError
from opentelemetry import trace

from airunner import telemetry


class AwsCallFailed(Exception):
    """An AWS call, or one entry of a batch call, failed for the request that waits on it.

    Attributes:
        code: AWS's error code ("" when AWS could not be reached).
        message: What went wrong, for a log line.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @classmethod
    def from_error(cls, error: ClientError | BotoCoreError) -> AwsCallFailed:
        if isinstance(error, ClientError):
            return cls(error.response.get("Error", {}).get("Code", ""), str(error))
        return cls("", str(error))


@dataclass(eq=False, kw_only=True)
class BatchRequest:
    """One caller's part of a batch call, answered when the call is done."""

    done: trio.Event = field(default_factory=trio.Event)
    error: AwsCallFailed | None = None
    # The caller's span: the batch call's span links to it.
    origin: trace.SpanContext = field(default_factory=telemetry.current_span_context)

    async def outcome(self) -> None:
        """Wait until the request is answered.

        Raises:
            AwsCallFailed: its part of the call failed.
        """
        await self.done.wait()
        if self.error is not None:
            # A fresh exception per caller: one failure may answer many.
            raise AwsCallFailed(self.error.code, self.error.message)


@contextmanager
def answering(requests: Sequence[BatchRequest], actor: str) -> Iterator[None]:
    """Answer every request when the block ends; if it fails, with that failure."""
    try:
        yield
    except BaseException:
        for request in requests:
            request.error = request.error or AwsCallFailed("", f"the {actor} stopped")
        raise
    finally:
        for request in requests:
            request.done.set()
