"""AWS failures as store errors, and the answers the store acts on as markers.

botocore retries throttling and server errors itself (``airunner.aws``); what
reaches here failed for good. A client sees ``resource_exhausted`` (throttled)
or ``unavailable`` (anything else), with no detail of our AWS account. Three
answers are not failures but outcomes the store handles: a cancelled
transaction, a failed condition and an expired receipt handle.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from airunner.actors import AwsCallFailed
from airunner.aws import THROTTLING_CODES
from airunner.store import ResourceExhausted, Unavailable

log = logging.getLogger(__name__)

# SQS's answers to a receipt handle whose message was deleted or received again.
RECEIPT_EXPIRED_CODES = frozenset(
    {"ReceiptHandleIsInvalid", "InvalidParameterValue", "MessageNotInflight"}
)


class TransactionCancelled(Exception):
    """A condition of a TransactWriteItems call failed; nothing was written."""


class ConditionFailed(Exception):
    """The condition of a conditional write failed; nothing was written.

    Attributes:
        item: The item as it was, when the write asked for it
            (``ReturnValuesOnConditionCheckFailure``) and it exists; else None.
    """

    def __init__(self, item: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.item = item


class ReceiptExpired(Exception):
    """SQS no longer knows the receipt handle: the message was deleted or received again."""


@contextmanager
def aws_errors() -> Iterator[None]:
    """AWS failures (after botocore's retries) as store errors; outcomes as markers.

    Raises:
        TransactionCancelled, ConditionFailed, ReceiptExpired: as AWS answered.
        ResourceExhausted: AWS throttled the call.
        Unavailable: any other failure.
    """
    try:
        yield
    except AwsCallFailed as e:
        # Reported by an actor, which logged the failure of the call itself.
        if e.code in RECEIPT_EXPIRED_CODES:
            raise ReceiptExpired() from None
        if e.code in THROTTLING_CODES or e.code == "UnprocessedItems":
            raise ResourceExhausted(f"the backend is busy ({e.message}); retry later") from None
        raise Unavailable(f"the backend failed ({e.code or 'unreachable'}); retry later") from None
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "")
        if code == "TransactionCanceledException":
            raise TransactionCancelled() from None
        if code == "ConditionalCheckFailedException":
            item: Any = e.response.get("Item")
            raise ConditionFailed(dict(item) if item else None) from None
        if code in RECEIPT_EXPIRED_CODES:
            raise ReceiptExpired() from None
        if code in THROTTLING_CODES:
            raise ResourceExhausted("the backend is throttling requests; retry later") from None
        log.warning("AWS call failed: %s", e)
        raise Unavailable(f"the backend failed ({code or 'error'}); retry later") from None
    except BotoCoreError as e:
        log.warning("AWS call failed: %s", e)
        raise Unavailable("the backend cannot be reached; retry later") from None
