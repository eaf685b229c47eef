"""ErrorMapping: store errors become their Connect codes; nothing internal leaks."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext

from airunner.store import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    StoreError,
    Unavailable,
)

log = logging.getLogger(__name__)

REQ = TypeVar("REQ")
RES = TypeVar("RES")

_CODES: dict[type[StoreError], Code] = {
    InvalidArgument: Code.INVALID_ARGUMENT,
    NotFound: Code.NOT_FOUND,
    FailedPrecondition: Code.FAILED_PRECONDITION,
    ResourceExhausted: Code.RESOURCE_EXHAUSTED,
    Unavailable: Code.UNAVAILABLE,
}


def _store_code(error: Exception) -> Code | None:
    """The Connect code of a store error, None for anything else."""
    for kind, code in _CODES.items():
        if isinstance(error, kind):
            return code
    return None


def error_reason(error: Exception) -> str:
    """A bounded name for what went wrong, for metric attributes: a Connect code."""
    if isinstance(error, ConnectError):
        return str(error.code.value)
    return str((_store_code(error) or Code.INTERNAL).value)


def to_connect_error(error: Exception, ctx: RequestContext[Any, Any]) -> ConnectError:
    """The error a client sees. Unexpected errors are logged here, with their
    traceback, and reach the client as a bare ``internal``."""
    if isinstance(error, ConnectError):
        return error
    if (code := _store_code(error)) is not None:
        return ConnectError(code, str(error))
    log.error("%s failed", ctx.method.name, exc_info=error)
    return ConnectError(Code.INTERNAL, "internal error")


class ErrorMapping:
    """An interceptor for unary, client-stream and server-stream methods."""

    async def intercept_unary(
        self,
        call_next: Callable[[REQ, RequestContext[Any, Any]], Awaitable[RES]],
        request: REQ,
        ctx: RequestContext[Any, Any],
    ) -> RES:
        try:
            return await call_next(request, ctx)
        except Exception as e:
            raise to_connect_error(e, ctx) from None

    async def intercept_client_stream(
        self,
        call_next: Callable[[AsyncIterator[REQ], RequestContext[Any, Any]], Awaitable[RES]],
        request: AsyncIterator[REQ],
        ctx: RequestContext[Any, Any],
    ) -> RES:
        try:
            return await call_next(request, ctx)
        except Exception as e:
            raise to_connect_error(e, ctx) from None

    async def intercept_server_stream(
        self,
        call_next: Callable[[REQ, RequestContext[Any, Any]], AsyncIterator[RES]],
        request: REQ,
        ctx: RequestContext[Any, Any],
    ) -> AsyncIterator[RES]:
        responses = call_next(request, ctx)
        try:
            async for response in responses:
                yield response
        except Exception as e:
            raise to_connect_error(e, ctx) from None
        finally:
            # Closing this generator does not close the one it wraps; the
            # handler's cleanup (releasing an undelivered job) must run now.
            aclose = getattr(responses, "aclose", None)
            if aclose is not None:
                await aclose()
