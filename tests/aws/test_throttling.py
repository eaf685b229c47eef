"""Throttled DynamoDB calls, injected by a proxy in front of moto: survived, nothing lost."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import trio

from airunner.api.job.v1.job_pb import JobState
from airunner.store import EventQuery, ResourceExhausted
from tests.asgi import lifespan, read_body, respond, serving
from tests.conftest import Metrics, open_sqs_store
from tests.helpers import end_event, output_event, params, request_id, result, start_event

# The proxy between the store and moto is an HTTP server on 127.0.0.1.
pytestmark = [pytest.mark.aws, pytest.mark.e2e]

_JSON = [(b"content-type", b"application/x-amz-json-1.0")]
_THROTTLED = json.dumps(
    {"__type": "com.amazonaws.dynamodb.v20120810#ThrottlingException", "message": "Rate exceeded"}
).encode()


class ThrottlingProxy:
    """Forwards AWS calls to moto, answering every other DynamoDB call with a throttle.

    With ``throttling`` off it forwards them all, except that the next
    ``unprocessed`` BatchWriteItem calls are answered "all items unprocessed"
    (as DynamoDB does when a partition is hot).
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.dynamodb_calls = 0
        self.throttled = 0
        self.throttling = True
        self.unprocessed = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        body = await read_body(receive)
        headers = [(k.decode(), v.decode()) for k, v in scope["headers"] if k != b"host"]
        target = dict(headers).get("x-amz-target", "")
        if target.endswith(".BatchWriteItem") and self.unprocessed > 0:
            self.unprocessed -= 1
            answer = {"UnprocessedItems": json.loads(body)["RequestItems"]}
            await respond(send, 200, json.dumps(answer).encode(), _JSON)
            return
        if target.startswith("DynamoDB_") and self.throttling:
            self.dynamodb_calls += 1
            if self.dynamodb_calls % 2 == 0:
                self.throttled += 1
                await respond(send, 400, _THROTTLED, _JSON)
                return
        query = scope["query_string"].decode()
        # A request may name its target in absolute form; keep only the path.
        path = urlsplit(scope["path"]).path or "/"
        url = f"{self.upstream}{path}" + (f"?{query}" if query else "")
        async with httpx.AsyncClient() as client:
            response = await client.request(scope["method"], url, headers=headers, content=body)
        headers_out = [
            (k.encode(), v.encode())
            for k, v in response.headers.items()
            if k.lower() not in ("content-length", "transfer-encoding", "connection")
        ]
        await respond(send, response.status_code, response.content, headers_out)


@pytest.fixture
async def proxy(
    aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[ThrottlingProxy]:
    app = ThrottlingProxy(aws_env["AWS_ENDPOINT_URL"])
    async with serving(app) as url:
        monkeypatch.setenv("AWS_ENDPOINT_URL", url)
        yield app


async def test_a_job_and_its_events_survive_throttling(
    proxy: ThrottlingProxy, recorded: Metrics
) -> None:
    throttles = recorded.total("airunner.dynamodb.throttles.total")
    writes = recorded.total("airunner.dynamodb.operations.total", operation="BatchWriteItem")
    async with open_sqs_store() as (store, _, _):
        job = await store.enqueue_job(request_id(), "default", params())
        delivery = await store.dequeue_job("default", 600, deadline=trio.current_time() + 15)
        assert delivery is not None
        events = [start_event(1), *(output_event(n) for n in range(2, 60)), end_event(60)]
        await store.publish_events(delivery.task_token, events)
        await store.complete_job(delivery.task_token, result(job.job_id))
        async with store.subscribe_events(job.job_id, EventQuery()) as stream:
            stored = []
            while (event := await stream.receive()) is not None:
                stored.append(event.sequence)
        assert stored == list(range(1, 61))
        assert (await store.get_job(job.job_id)).state == JobState.COMPLETED
    assert proxy.throttled >= 5
    # Throttled attempts are counted (all but one the store's end may have cut
    # short), and each call once however often it was tried.
    counted = recorded.total("airunner.dynamodb.throttles.total") - throttles
    assert proxy.throttled - 1 <= counted <= proxy.throttled
    assert (
        recorded.total("airunner.dynamodb.operations.total", operation="BatchWriteItem") - writes
        == 3
    )


async def _running_job(store: Any) -> Any:
    await store.enqueue_job(request_id(), "default", params())
    delivery = await store.dequeue_job("default", 600, deadline=trio.current_time() + 15)
    assert delivery is not None
    return delivery


async def test_unprocessed_events_are_written_again_with_backoff(
    proxy: ThrottlingProxy, recorded: Metrics
) -> None:
    proxy.throttling = False
    retries = recorded.total("airunner.dynamodb.batch_retries.total")
    async with open_sqs_store() as (store, _, _):
        delivery = await _running_job(store)
        proxy.unprocessed = 2
        await store.publish_events(delivery.task_token, [start_event(1), output_event(2)])
        async with store.subscribe_events(delivery.job.job_id, EventQuery()) as stream:
            assert (await stream.receive()).sequence == 1
            assert (await stream.receive()).sequence == 2
    assert recorded.total("airunner.dynamodb.batch_retries.total") - retries == 2


async def test_events_still_unprocessed_after_three_attempts_are_refused(
    proxy: ThrottlingProxy, recorded: Metrics
) -> None:
    proxy.throttling = False
    async with open_sqs_store() as (store, _, _):
        delivery = await _running_job(store)
        proxy.unprocessed = 3
        with pytest.raises(ResourceExhausted, match="not stored after 3 attempts"):
            await store.publish_events(delivery.task_token, [start_event(1)])
        # The writer goes on: the same events, sent again, are stored.
        await store.publish_events(delivery.task_token, [start_event(1)])
        async with store.subscribe_events(delivery.job.job_id, EventQuery()) as stream:
            assert (await stream.receive()).sequence == 1
