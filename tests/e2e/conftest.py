"""A real airunner server on 127.0.0.1, in the test's trio run, and real Connect clients.

The clients are connectrpc's sync clients run in worker threads, as a worker
process would use them; the server is the one ``airunner-server`` runs.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import jwt
import pytest
import trio
from connectrpc.protocol import ProtocolType
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pyqwest import HTTPVersion, SyncClient, SyncHTTPTransport

from airunner.api.job.v1.job_connect import JobEventsServiceClientSync, JobServiceClientSync
from airunner.config import MemoryStoreSettings
from airunner.http import BearerAuth
from airunner.server import Server, ServerSettings, open_store
from airunner.store import JobStore

T = TypeVar("T")


@dataclass
class RunningServer:
    url: str
    server: Server
    store: JobStore


@asynccontextmanager
async def run_server(
    *,
    auth: BearerAuth | None = None,
    poll_window: float = 5.0,
    grace_period: float = 5.0,
    store: JobStore | None = None,
    listen: str = "127.0.0.1:0",
) -> AsyncIterator[RunningServer]:
    settings = ServerSettings(
        listen=listen,
        store=MemoryStoreSettings(token_signing_secret=b"e2e-secret"),
        auth=auth,
        grace_period=grace_period,
        poll_window=poll_window,
    )
    async with AsyncExitStack() as stack:
        if store is None:
            store = await stack.enter_async_context(open_store(settings.store))
        server = Server(settings, store)
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(server.run)
            yield RunningServer(binds[0], server, store)
            server.drain.begin()


@pytest.fixture
async def running() -> AsyncIterator[RunningServer]:
    async with run_server() as running:
        yield running


class Clients:
    """Both services' clients over one HTTP client, called from worker threads."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        protocol: ProtocolType = ProtocolType.CONNECT,
        http2: bool = False,
    ) -> None:
        transport = SyncHTTPTransport(http_version=HTTPVersion.HTTP2 if http2 else None)
        self.http = SyncClient(transport)
        self.jobs = JobServiceClientSync(url, protocol=protocol, http_client=self.http)
        self.events = JobEventsServiceClientSync(url, protocol=protocol, http_client=self.http)
        self.headers = {"authorization": f"Bearer {token}"} if token else {}

    async def call(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        kwargs.setdefault("headers", self.headers)
        return await trio.to_thread.run_sync(partial(method, *args, **kwargs))

    async def collect(
        self, method: Callable[..., Iterator[T]], *args: Any, **kwargs: Any
    ) -> list[T]:
        kwargs.setdefault("headers", self.headers)
        return await trio.to_thread.run_sync(lambda: list(method(*args, **kwargs)))

    def close(self) -> None:
        self.jobs.close()
        self.events.close()


@pytest.fixture
def clients(running: RunningServer) -> Iterator[Clients]:
    made = Clients(running.url)
    yield made
    made.close()


@dataclass
class KeyPair:
    private: ec.EllipticCurvePrivateKey
    public_pem: str
    private_pem: str

    def token(self, *, exp_in: int = 600, **claims: Any) -> str:
        now = int(time.time())
        return jwt.encode(
            {"sub": "tests", "iat": now, "exp": now + exp_in} | claims,
            self.private,
            algorithm="ES256",
        )


@pytest.fixture(scope="session")
def key_pair() -> KeyPair:
    private = ec.generate_private_key(ec.SECP256R1())
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return KeyPair(private, public_pem, private_pem)
