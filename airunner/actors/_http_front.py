"""HttpFront: Hypercorn's trio worker serving the ASGI app on one port."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import hypercorn.trio
import hypercorn.trio.tcp_server
import trio
from hypercorn.config import Config
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
