"""How an actor reports a failed AWS call to each request it carried."""

from __future__ import annotations

from botocore.exceptions import BotoCoreError, ClientError


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
