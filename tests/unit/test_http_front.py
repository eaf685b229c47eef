"""The HTTP front's reads: a worker's MiB-sized messages in one read, not sixteen."""

from __future__ import annotations

import inspect

import hypercorn.trio.tcp_server

from airunner.actors import _http_front


def test_hypercorn_reads_a_mib_at_a_time() -> None:
    assert hypercorn.trio.tcp_server.MAX_RECV == _http_front.READ_BYTES == 1024 * 1024
    # Hypercorn still reads through the setting changed (no option exists for it).
    source = inspect.getsource(hypercorn.trio.tcp_server.TCPServer._read_data)
    assert "receive_some(MAX_RECV)" in source
