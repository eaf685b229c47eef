"""The HTTP front's reads and writes: a worker's MiB-sized messages in one read,
not sixteen; a response's head in the same write as the piece after it."""

from __future__ import annotations

import inspect
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import hypercorn.trio.tcp_server
import pytest
import trio

from airunner.actors import HttpFront, _http_front


def test_hypercorn_reads_a_mib_at_a_time() -> None:
    assert hypercorn.trio.tcp_server.MAX_RECV == _http_front.READ_BYTES == 1024 * 1024
    # Hypercorn still reads through the setting changed (no option exists for it).
    source = inspect.getsource(hypercorn.trio.tcp_server.TCPServer._read_data)
    assert "receive_some(MAX_RECV)" in source


async def lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        kind = message["type"].removeprefix("lifespan.")
        await send({"type": f"lifespan.{kind}.complete"})
        if kind == "shutdown":
            return


class App:
    """``/unary``: one body; ``/stream``: a piece, another once ``more`` is set;
    ``/headless``: a response started and never given a body."""

    def __init__(self) -> None:
        self.more = trio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        path = scope["path"]
        length = [(b"content-length", b"5")] if path == "/unary" else []
        await send({"type": "http.response.start", "status": 200, "headers": length})
        if path == "/unary":
            await send({"type": "http.response.body", "body": b"hello"})
        elif path == "/stream":
            await send({"type": "http.response.body", "body": b"first", "more_body": True})
            await self.more.wait()
            await send({"type": "http.response.body", "body": b"second", "more_body": False})


@asynccontextmanager
async def front(app: App) -> AsyncIterator[int]:
    stop = trio.Event()
    serving = HttpFront(app, "127.0.0.1:0", shutdown_trigger=stop.wait, grace_period=1)
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serving.run)
        yield int(binds[0].rsplit(":", 1)[1])
        stop.set()


def request(port: int, path: str) -> socket.socket:
    client = socket.create_connection(("127.0.0.1", port))
    client.sendall(f"GET {path} HTTP/1.1\r\nhost: test\r\n\r\n".encode())
    return client


def read_until(client: socket.socket, end: bytes) -> bytes:
    got = b""
    while end not in got:
        data = client.recv(65536)
        assert data, got
        got += data
    return got


async def test_a_responses_head_and_body_go_out_in_one_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    writes: list[bytes] = []
    send_all = trio.SocketStream.send_all

    async def counted(self: trio.SocketStream, data: Any) -> None:
        if data:
            writes.append(bytes(data))
        await send_all(self, data)

    monkeypatch.setattr(trio.SocketStream, "send_all", counted)
    async with front(App()) as port:
        client = await trio.to_thread.run_sync(request, port, "/unary")
        with client:
            got = await trio.to_thread.run_sync(read_until, client, b"hello")
    assert got.startswith(b"HTTP/1.1 200")
    assert writes == [got]


async def test_a_streams_first_piece_goes_out_with_its_head_before_the_next_is_made() -> None:
    app = App()
    async with front(app) as port:
        client = await trio.to_thread.run_sync(request, port, "/stream")
        with client:
            got = await trio.to_thread.run_sync(read_until, client, b"first")
            assert got.startswith(b"HTTP/1.1 200")
            assert b"second" not in got
            app.more.set()
            got += await trio.to_thread.run_sync(read_until, client, b"0\r\n\r\n")
    assert got.index(b"first") < got.index(b"second")


async def test_a_response_that_ends_without_a_body_still_sends_its_head() -> None:
    async with front(App()) as port:
        client = await trio.to_thread.run_sync(request, port, "/headless")
        with client:
            got = await trio.to_thread.run_sync(read_until, client, b"\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 200")
