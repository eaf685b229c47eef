"""Task tokens: what a worker holds while it owns one delivery of a job.

A token is ``v1.<payload>.<signature>``: the payload is base64url JSON naming the
job, its queue, the delivery attempt and (SQS) the receipt handle; the signature
is HMAC-SHA256 over ``v1.<payload>`` with the server's signing secret. The store,
not the token, decides whether the delivery is still current.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass

from ._errors import InvalidArgument

_VERSION = "v1"
# Far above any real token (an SQS receipt handle is at most 1 KiB), low enough
# that a hostile caller cannot make us hash megabytes.
_MAX_TOKEN_LENGTH = 8192


@dataclass(frozen=True)
class TaskToken:
    """The claims of a task token."""

    job_id: str
    queue: str
    attempt: int
    receipt_handle: str = ""


class TaskTokenSigner:
    """Signs and verifies task tokens with one HMAC secret."""

    def __init__(self, secret: bytes) -> None:
        if not secret:
            raise ValueError("the task token signing secret must not be empty")
        self._secret = secret

    def sign(self, token: TaskToken) -> str:
        claims = {"j": token.job_id, "q": token.queue, "a": token.attempt}
        if token.receipt_handle:
            claims["r"] = token.receipt_handle
        payload = _b64encode(json.dumps(claims, separators=(",", ":")).encode())
        signed = f"{_VERSION}.{payload}"
        return f"{signed}.{_b64encode(self._mac(signed))}"

    def verify(self, text: str) -> TaskToken:
        """Return the claims of a token this signer made.

        Raises:
            InvalidArgument: the token is empty, malformed, of another version, or
                its signature does not match.
        """
        if not text:
            raise InvalidArgument("task_token is required")
        if len(text) > _MAX_TOKEN_LENGTH:
            raise InvalidArgument("task token is malformed")
        parts = text.split(".")
        if len(parts) != 3:
            raise InvalidArgument("task token is malformed")
        version, payload, signature = parts
        if version != _VERSION:
            raise InvalidArgument("task token has an unsupported version")
        try:
            given = _b64decode(signature)
        except ValueError:
            raise InvalidArgument("task token is malformed") from None
        if not hmac.compare_digest(given, self._mac(f"{version}.{payload}")):
            raise InvalidArgument("task token signature does not match")
        try:
            claims = json.loads(_b64decode(payload))
            token = TaskToken(
                job_id=claims["j"],
                queue=claims["q"],
                attempt=claims["a"],
                receipt_handle=claims.get("r", ""),
            )
        except (ValueError, KeyError, TypeError):
            raise InvalidArgument("task token is malformed") from None
        if not (
            isinstance(token.job_id, str)
            and isinstance(token.queue, str)
            and isinstance(token.attempt, int)
            and isinstance(token.receipt_handle, str)
        ):
            raise InvalidArgument("task token is malformed")
        return token

    def _mac(self, signed: str) -> bytes:
        return hmac.new(self._secret, signed.encode(), hashlib.sha256).digest()


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, UnicodeEncodeError) as e:
        raise ValueError(str(e)) from None
