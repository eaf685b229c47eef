"""Pieces of the small ASGI apps the tests serve with Hypercorn (a proxy, a collector)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import hypercorn.trio
import trio
from hypercorn.config import Config


@asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """Serve ``app`` on a free 127.0.0.1 port; yield its URL."""
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    done = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            lambda task_status: hypercorn.trio.serve(
                app, config, shutdown_trigger=done.wait, task_status=task_status
            )
        )
        yield str(binds[0])
        done.set()


async def lifespan(receive: Any, send: Any) -> None:
    """Answer the lifespan protocol until shutdown."""
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})


async def read_body(receive: Any) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def respond(
    send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers or []})
    await send({"type": "http.response.body", "body": body})
