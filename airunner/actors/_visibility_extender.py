"""VisibilityExtender: one queue's visibility changes, in ChangeMessageVisibilityBatch calls."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio
from botocore.exceptions import BotoCoreError, ClientError

from airunner import telemetry

from ._batch_call import AwsCallFailed, BatchRequest, answering

if TYPE_CHECKING:
    from types_aiobotocore_sqs import SQSClient

log = logging.getLogger(__name__)

# SQS's limit of entries per ChangeMessageVisibilityBatch call.
BATCH_ENTRIES = 10
# Requests waiting for the extender; a caller beyond these waits to hand its change over.
BACKLOG = 32


@dataclass(eq=False)
class _Change(BatchRequest):
    receipt_handle: str
    seconds: int


class VisibilityExtender:
    """Coalesces visibility changes of one queue (extensions, releases, new
    deliveries) into ChangeMessageVisibilityBatch calls of up to 10 entries.

    Changes that arrive while a call is in flight go together in the next one.
    Two changes of one message never share a call, so they apply in the order
    they were asked for.
    """

    restartable = True

    def __init__(self, sqs: SQSClient, queue: str, url: str) -> None:
        self.name = f"visibility extender ({queue})"
        self._sqs = sqs
        self._url = url
        self._send, self._receive = trio.open_memory_channel[_Change](BACKLOG)
        self._held: _Change | None = None

    async def change(self, receipt_handle: str, seconds: int) -> None:
        """Make the message invisible for ``seconds`` from now (0: visible at once).

        Raises:
            AwsCallFailed: the change was refused (for this message, such as an
                expired receipt handle, or for the whole call).

        Cancellation:
            Safe: a change already handed over is still made.
        """
        request = _Change(receipt_handle, seconds)
        await self._send.send(request)
        await request.outcome()

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            changes = await self._next_round()
            with answering(changes, self.name):
                await self._apply(changes)

    async def _next_round(self) -> list[_Change]:
        """The changes for one call: the first to come, then what else waits."""
        first, self._held = self._held, None
        changes = [first if first is not None else await self._receive.receive()]
        receipts = {changes[0].receipt_handle}
        while len(changes) < BATCH_ENTRIES:
            try:
                change = self._receive.receive_nowait()
            except trio.WouldBlock:
                break
            if change.receipt_handle in receipts:
                self._held = change
                break
            receipts.add(change.receipt_handle)
            changes.append(change)
        return changes

    async def _apply(self, changes: list[_Change]) -> None:
        # The call serves many callers: its span links to each of theirs.
        links = telemetry.links(change.origin for change in changes)
        with telemetry.tracer.start_as_current_span("change visibility", links=links):
            await self._call(changes)

    async def _call(self, changes: list[_Change]) -> None:
        try:
            response = await self._sqs.change_message_visibility_batch(
                QueueUrl=self._url,
                Entries=[
                    {
                        "Id": str(index),
                        "ReceiptHandle": change.receipt_handle,
                        "VisibilityTimeout": change.seconds,
                    }
                    for index, change in enumerate(changes)
                ],
            )
        except (ClientError, BotoCoreError) as e:
            log.warning("ChangeMessageVisibilityBatch on %s failed: %s", self.name, e)
            failure = AwsCallFailed.from_error(e)
            for change in changes:
                change.error = failure
            return
        for failed in response.get("Failed", []):
            changes[int(failed["Id"])].error = AwsCallFailed(
                failed.get("Code", ""), failed.get("Message", "") or failed.get("Code", "")
            )
