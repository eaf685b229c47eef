"""The server command keeps what start-up made out of the garbage collector's way."""

from __future__ import annotations

import gc

import pytest
import trio

from airunner.cli import server as server_command
from airunner.config import MemoryStoreSettings
from airunner.server import Server, ServerSettings
from tests.helpers import eventually

pytestmark = pytest.mark.e2e


async def test_the_server_freezes_start_up_objects_once_serving() -> None:
    settings = ServerSettings(
        listen="127.0.0.1:0",
        store=MemoryStoreSettings(token_signing_secret=b"e2e-secret"),
        auth=None,
        grace_period=1.0,
    )
    server = Server(settings)
    gc.unfreeze()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server_command._serve, server, settings.grace_period)
            await eventually(lambda: gc.get_freeze_count() > 0)
            server.drain.begin()
    finally:
        gc.unfreeze()
