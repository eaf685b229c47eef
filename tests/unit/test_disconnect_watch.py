"""DisconnectWatch, at the ASGI interface: the moments a socket cannot be made to show.

tests/e2e/test_disconnect.py drops real connections; here the client leaves while the
job's message is still being written (a stalled socket), or after the response
ended, or in the middle of a request body.
"""

from __future__ import annotations

import logging
import struct
from typing import Any

import pytest
import trio
import trio.testing

from airunner.api.job.v1.job_pb import DequeueJobRequest
from airunner.http import DisconnectWatch, Drain, build_app
from airunner.store import MemoryJobStore, TaskTokenSigner
from tests.helpers import params, request_id

SECRET = b"unit-secret"


def http_scope(path: str, content_type: str = "application/connect+proto") -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.1"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", content_type.encode())],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8080),
        "state": {},
        "extensions": {},
    }


class Client:
    """The ASGI server's side of one request: its body (all of it, unless the client
    leaves before the end), then a client that may leave."""

    def __init__(self, *bodies: bytes, whole: bool = True) -> None:
        self._bodies = list(bodies)
        self._whole = whole
        self.gone = trio.Event()
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        if self._bodies:
            await trio.lowlevel.checkpoint()
            body = self._bodies.pop(0)
            more = bool(self._bodies) or not self._whole
            return {"type": "http.request", "body": body, "more_body": more}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        await trio.lowlevel.checkpoint()
        self.sent.append(message)


class StalledClient(Client):
    """A client whose socket takes no more data once the response has begun."""

    def __init__(self, *bodies: bytes) -> None:
        super().__init__(*bodies)
        self.stalled = trio.Event()

    async def send(self, message: dict[str, Any]) -> None:
        await super().send(message)
        if message["type"] == "http.response.body" and message.get("more_body"):
            self.stalled.set()
            await trio.sleep_forever()


def envelope(message: bytes) -> bytes:
    return struct.pack(">BI", 0, len(message)) + message


async def test_a_job_being_sent_to_a_client_that_left_goes_to_the_next_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryJobStore(token_secret=SECRET)
    app = build_app(store, auth=None, drain=Drain())
    request = DequeueJobRequest(queue="default", visibility_timeout_seconds=60)
    client = StalledClient(envelope(request.to_binary()))
    job = await store.enqueue_job(request_id(), "default", params())
    with caplog.at_level(logging.INFO), trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            scope = http_scope("/job.v1.JobService/DequeueJob")
            nursery.start_soon(app, scope, client.receive, client.send)
            await client.stalled.wait()
            client.gone.set()
    # Released as the call ended, not when its confirm window closes.
    again = await store.dequeue_job("default", 60, deadline=trio.current_time())
    assert again is not None
    assert again.job.job_id == job.job_id
    assert TaskTokenSigner(SECRET).verify(again.task_token).attempt == 2
    assert f"released job {job.job_id}: its dequeuer left" in caplog.text
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_a_disconnect_after_the_response_cancels_nothing() -> None:
    """Hypercorn reports every stream's end as a disconnect, also after a response."""
    finished = False

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal finished
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done", "more_body": False})
        client.gone.set()
        await trio.testing.wait_all_tasks_blocked()
        finished = True

    client = Client(b"")
    with trio.fail_after(5):
        await DisconnectWatch(app)(http_scope("/unary"), client.receive, client.send)
    assert finished


async def test_a_disconnect_within_a_request_body_is_the_apps_to_read() -> None:
    """A client stream reads its body for its whole life; a client that leaves is an
    error of the body, handled by the app, which is not cancelled."""
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while (message := await receive())["type"] != "http.disconnect":
            seen.append(message["type"])
            client.gone.set()
        seen.append(message["type"])
        await trio.lowlevel.checkpoint()
        seen.append("finished")

    client = Client(b"first", whole=False)
    with trio.fail_after(5):
        await DisconnectWatch(app)(http_scope("/stream"), client.receive, client.send)
    assert seen == ["http.request", "http.disconnect", "finished"]


async def test_the_apps_own_error_is_raised_as_itself() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        raise ValueError("from the app")

    client = Client(b"")
    with pytest.raises(ValueError, match="from the app"):
        await DisconnectWatch(app)(http_scope("/unary"), client.receive, client.send)
