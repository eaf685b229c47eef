"""AWS clients on trio: aiobotocore with its httpx backend, traced and counted.

aiobotocore's default aiohttp backend does not run under trio; its httpx backend
does. Credentials come from the default chain (the ECS task role in
production); ``AWS_REGION`` and ``AWS_ENDPOINT_URL`` (moto in tests) are honoured.
Throttling and 5xx answers are retried by botocore's standard retry mode, with
exponential backoff and jitter.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiobotocore.config import AioConfig
from aiobotocore.httpxsession import HttpxSession
from aiobotocore.session import get_session
from opentelemetry.trace import SpanKind, Status, StatusCode

from airunner import telemetry

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient
    from types_aiobotocore_sqs import SQSClient

# Attempts per call in botocore's standard mode (the first try included) before
# a throttled or failing call gives up.
MAX_ATTEMPTS = 5
CONNECT_TIMEOUT_SECONDS = 5.0
# Longer than SQS's longest long poll (20 s), so a receive is never cut short.
READ_TIMEOUT_SECONDS = 30.0
# Connections per client: concurrent requests (many jobs publishing, polls
# in flight) must not queue behind botocore's default of 10.
MAX_POOL_CONNECTIONS = 64
# AWS's error codes for "too many requests".
THROTTLING_CODES = frozenset(
    {
        "ThrottlingException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "OverLimit",
    }
)


@dataclass(frozen=True)
class AwsClients:
    sqs: SQSClient
    dynamodb: DynamoDBClient


@asynccontextmanager
async def open_aws_clients() -> AsyncIterator[AwsClients]:
    """SQS and DynamoDB clients, closed on exit."""
    config = AioConfig(
        # The stubs know only the aiohttp session; httpx is the one that runs on trio.
        http_session_cls=HttpxSession,  # type: ignore[arg-type]
        retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS},
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        read_timeout=READ_TIMEOUT_SECONDS,
        max_pool_connections=MAX_POOL_CONNECTIONS,
    )
    # botocore reads AWS_DEFAULT_REGION; ECS and our task definition set AWS_REGION.
    region = os.environ.get("AWS_REGION") or None
    session = get_session()
    async with AsyncExitStack() as stack:
        sqs = await stack.enter_async_context(
            session.create_client("sqs", region_name=region, config=config)
        )
        dynamodb = await stack.enter_async_context(
            session.create_client("dynamodb", region_name=region, config=config)
        )
        for client in (sqs, dynamodb):
            _instrument(client)
        yield AwsClients(sqs=sqs, dynamodb=dynamodb)


_SPAN = "airunner.span"


def _instrument(client: Any) -> None:
    """A client span per call ``client`` makes, and for DynamoDB, calls and throttles
    counted: aiobotocore has no OpenTelemetry instrumentation (the botocore one
    patches the synchronous client), but it emits botocore's events around every call."""
    events = client.meta.events
    service = client.meta.service_model.service_id.hyphenize()
    events.register(f"provide-client-params.{service}", _start_span)
    events.register(f"after-call.{service}", _end_span)
    events.register(f"after-call-error.{service}", _end_span_with_error)
    if service == "dynamodb":
        events.register("after-call.dynamodb", _count_operation)
        events.register("needs-retry.dynamodb", _count_throttle)


def _start_span(params: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
    service = model.service_model.service_id
    attributes: dict[str, Any] = {
        "rpc.system": "aws-api",
        "rpc.service": str(service),
        "rpc.method": model.name,
    }
    if region := context.get("client_region"):
        attributes["cloud.region"] = region
    tables = (
        [params["TableName"]] if "TableName" in params else list(params.get("RequestItems", {}))
    )
    if tables:
        attributes["aws.dynamodb.table_names"] = tables
    if "QueueUrl" in params:
        attributes["aws.sqs.queue_url"] = params["QueueUrl"]
    context[_SPAN] = telemetry.tracer.start_span(
        f"{service}/{model.name}", kind=SpanKind.CLIENT, attributes=attributes
    )


def _end_span(
    http_response: Any, parsed: dict[str, Any], context: dict[str, Any], **_: Any
) -> None:
    span = context.pop(_SPAN, None)
    if span is None:
        return
    span.set_attribute("http.response.status_code", http_response.status_code)
    metadata = parsed.get("ResponseMetadata", {})
    if request_id := metadata.get("RequestId"):
        span.set_attribute("aws.request_id", request_id)
    if retries := metadata.get("RetryAttempts"):
        span.set_attribute("aws.retry_attempts", retries)
    if http_response.status_code >= 300:
        code = parsed.get("Error", {}).get("Code", "") or str(http_response.status_code)
        span.set_attribute("error.type", code)
        span.set_status(Status(StatusCode.ERROR, code))
    span.end()


def _end_span_with_error(exception: BaseException, context: dict[str, Any], **_: Any) -> None:
    span = context.pop(_SPAN, None)
    if span is None:
        return
    span.record_exception(exception)
    span.set_attribute("error.type", type(exception).__qualname__)
    span.set_status(Status(StatusCode.ERROR, str(exception)))
    span.end()


def _count_operation(model: Any, **_: Any) -> None:
    """One DynamoDB call made (its retries included), by operation."""
    telemetry.dynamodb_operations.add(1, {"operation": model.name})


def _count_throttle(response: Any, operation: Any, **_: Any) -> None:
    """After each attempt: count the throttled ones, by operation."""
    if response is None:
        return
    code = response[1].get("Error", {}).get("Code", "")
    if code in THROTTLING_CODES:
        telemetry.dynamodb_throttles.add(1, {"operation": operation.name})
