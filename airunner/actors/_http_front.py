"""HttpFront: Hypercorn's trio worker serving the ASGI app on one port."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import h11
import hypercorn.protocol
import hypercorn.trio
import hypercorn.trio.tcp_server
import trio
from hypercorn.config import Config
from hypercorn.events import RawData
from hypercorn.protocol.events import Event as StreamEvent
from hypercorn.protocol.events import StreamClosed
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.typing import Framework

log = logging.getLogger(__name__)

# Bytes Hypercorn asks a connection for at a time. Its 64 KiB cut each of a
# worker's MiB-sized PublishJobEvents messages into 16 or more reads, each one
# through h11 and the ASGI app; Hypercorn has no setting for it.
READ_BYTES = 1024 * 1024
hypercorn.trio.tcp_server.MAX_RECV = READ_BYTES

# Hypercorn ends a connection after this many requests and the next request on
# it fails; workers and load balancers keep connections for days, so make it
# unreachable in practice.
KEEP_ALIVE_MAX_REQUESTS = 2**62
# Longer than the load balancer's idle timeout (60 s by default on AWS), so it
# is always the balancer that closes an idle connection, never us under it.
KEEP_ALIVE_TIMEOUT_SECONDS = 75.0


class HttpFront:
    """Serves ``app`` on ``listen`` (HTTP/1.1 and h2c on the same port).

    Once ``shutdown_trigger`` returns it stops accepting connections, lets
    in-flight requests finish for up to ``grace_period`` seconds, then cancels
    what is left and returns.

    ``task_status.started`` reports the bound URLs, such as ``["http://127.0.0.1:8080"]``.
    """

    name = "HTTP front"
    # Its sockets and connections die with it; a supervisor cannot restore them.
    restartable = False

    def __init__(
        self,
        app: Framework,
        listen: str,
        *,
        shutdown_trigger: Callable[[], Awaitable[None]],
        grace_period: float,
    ) -> None:
        self._app = app
        self._config = Config()
        self._config.bind = [listen]
        self._config.keep_alive_max_requests = KEEP_ALIVE_MAX_REQUESTS
        self._config.keep_alive_timeout = KEEP_ALIVE_TIMEOUT_SECONDS
        self._config.graceful_timeout = grace_period
        self._config.errorlog = logging.getLogger("hypercorn.error")
        self._config.accesslog = None
        self._config.include_server_header = False
        self._shutdown_trigger = shutdown_trigger

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        await hypercorn.trio.serve(
            self._app,
            self._config,
            shutdown_trigger=self._shutdown_trigger,
            task_status=task_status,
        )


class _HeadWithBody(H11Protocol):
    """Hypercorn's HTTP/1.1, writing a response's head with the piece after it.

    Hypercorn writes a response's head as soon as the app starts the response,
    then each piece of its body: a unary RPC cost two writes, each a system
    call and a segment that wakes the client up. The apps here start a
    response only to send its first piece at once, so the head waits for that
    piece and goes out in the same write (and before the stream's end if no
    piece comes).
    """

    _head = b""

    async def _send_h11_event(self, event: Any) -> None:
        try:
            data = self.connection.send(event)
        except h11.LocalProtocolError:
            if self.connection.their_state != h11.ERROR:
                raise
            return
        if isinstance(event, h11.Response):
            self._head += data or b""
            return
        head, self._head = self._head, b""
        await self.send(RawData(data=head + data if head else data or b""))

    async def stream_send(self, event: StreamEvent) -> None:
        if isinstance(event, StreamClosed) and self._head:
            head, self._head = self._head, b""
            await self.send(RawData(data=head))
        await super().stream_send(event)


# Hypercorn's connections make their HTTP/1.1 protocol from this name.
hypercorn.protocol.H11Protocol = _HeadWithBody  # type: ignore[attr-defined]
