"""DisconnectWatch: a request whose client has gone stops its work at once.

connectrpc notices that a server stream's client has gone only when the handler
next yields a message. A handler parked in a wait (a long poll with no job, the
events of a job that publishes nothing) would keep its subscription, its place
among the dequeuers and its socket until then: a job enqueued meanwhile would be
offered to every such dead poll in turn, each releasing it, before a live worker
got it.

Hypercorn tells the app through ``receive()``: once the request's body has been
read, the next message is ``http.disconnect``, delivered when the peer closes
the connection (HTTP/1.1 and HTTP/2) or resets the stream (HTTP/2), whatever
the app is doing meanwhile (the one exception, an HTTP/1.1 client that sends
bytes after its request, is in docs/ARCHITECTURE.md). It is also delivered
after a response completes, which is no reason to cancel anything.
"""

from __future__ import annotations

import trio
from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveCallable,
    ASGIReceiveEvent,
    ASGISendCallable,
    ASGISendEvent,
    Scope,
)


class DisconnectWatch:
    """ASGI middleware: cancels the app's work on a request whose client has gone.

    Once the app has read the request's whole body, the watch reads ``receive()``
    in a task of its own; on ``http.disconnect`` before the response is complete
    it cancels the app's call. The handlers' cleanup runs as for any cancellation:
    a DequeueJob releases a job it had taken, a StreamJobEvents leaves its
    subscription. A request whose body is still coming (a client stream) is
    left alone: the app reads the disconnect itself, as an error of the body.

    The app still sees every message: after the body, its ``receive()`` returns
    ``http.disconnect`` once the watch has seen it, so only one task ever reads
    Hypercorn's queue.

    Args:
        app: The ASGI app whose requests are watched; lifespan and websocket
            scopes pass through untouched.
    """

    def __init__(self, app: ASGIFramework) -> None:
        self._app = app

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        error: BaseException | None = None
        try:
            async with trio.open_nursery() as nursery:
                request = _Request(receive, send, nursery)
                try:
                    with request.work:
                        await self._app(scope, request.receive, request.send)
                except BaseException as e:
                    # Raised after the nursery: inside, it would be wrapped in a group.
                    error = e
                finally:
                    nursery.cancel_scope.cancel()
        except BaseException:
            # A cancelled nursery raises a group of its own cancellations, which
            # would hide the app's error.
            if error is not None:
                raise error from None
            raise
        if error is not None:
            raise error


class _Request:
    """One request's side of the watch: its body, its response, its client."""

    def __init__(
        self, receive: ASGIReceiveCallable, send: ASGISendCallable, nursery: trio.Nursery
    ) -> None:
        self._receive = receive
        self._send = send
        self._nursery = nursery
        self.work = trio.CancelScope()
        self._body_read = False
        self._responded = False
        self._gone = trio.Event()

    async def receive(self) -> ASGIReceiveEvent:
        if self._body_read or self._gone.is_set():
            await self._gone.wait()
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request" and not message.get("more_body", False):
            self._body_read = True
            self._nursery.start_soon(self._watch)
        elif message["type"] == "http.disconnect":
            self._gone.set()
        return message

    async def send(self, message: ASGISendEvent) -> None:
        # Marked before the send: Hypercorn ends the stream inside it, queueing
        # the disconnect that follows every response and making the connection
        # idle again; cancelling the send there would leave it never idle, and
        # a draining server would wait its whole grace period for it.
        if (message["type"] == "http.response.body" and not message.get("more_body", False)) or (
            message["type"] == "http.response.trailers" and not message.get("more_trailers", False)
        ):
            self._responded = True
        await self._send(message)

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self._gone.set()
        if not self._responded:
            self.work.cancel()
