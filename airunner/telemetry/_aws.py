"""A client span per AWS call, and DynamoDB's call and throttle counts, by botocore hooks.

aiobotocore has no OpenTelemetry instrumentation (the botocore one patches the
synchronous client), but it emits botocore's events around every call.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.trace import SpanKind, Status, StatusCode

from ._instruments import dynamodb_operations, dynamodb_throttles, tracer

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
_SPAN = "airunner.span"


def instrument(client: Any) -> None:
    """Trace every call ``client`` makes; for DynamoDB, count calls and throttles too."""
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
    context[_SPAN] = tracer.start_span(
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
    dynamodb_operations.add(1, {"operation": model.name})


def _count_throttle(response: Any, operation: Any, **_: Any) -> None:
    """After each attempt: count the throttled ones, by operation."""
    if response is None:
        return
    code = response[1].get("Error", {}).get("Code", "")
    if code in THROTTLING_CODES:
        dynamodb_throttles.add(1, {"operation": operation.name})
