"""The Connect client the CLI and the worker use, callable from trio.

connectrpc's async client runs only on asyncio, so every call here runs
connectrpc's sync client in a worker thread. All protocol work stays in the
library; this module only moves messages between threads:

- unary calls run in a thread that trio abandons when cancelled (the call ends
  in the background, bounded by its timeout);
- a server stream is pumped by its thread into a trio memory channel;
- a client stream pulls its messages from a trio memory channel.

Cancellation (Ctrl-C, SIGTERM handling, ``trio.move_on_after``) therefore ends
every call at once on the trio side.

A client may be given several servers (replicas of one store). It talks to one
at a time; a call that finds it unreachable (``unavailable``: connection refused
or reset, a draining server) moves the client on to the next, so that the
caller's own retry, under its own backoff, reaches another replica.
"""

from __future__ import annotations

import contextvars
import logging
import math
import ssl
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import aclosing, suppress
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple, TypeVar
from urllib.parse import urlsplit

import trio
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc_otel import OpenTelemetryInterceptor
from pyqwest import SyncClient, SyncHTTPTransport

from airunner.api.job.v1.job_connect import JobEventsServiceClientSync, JobServiceClientSync
from airunner.api.job.v1.job_pb import (
    CancelJobRequest,
    CancelJobResponse,
    CompleteJobRequest,
    CompleteJobResponse,
    DequeueJobRequest,
    DequeueJobResponse,
    EnqueueJobRequest,
    EnqueueJobResponse,
    GetJobRequest,
    GetJobResponse,
    ListJobsRequest,
    ListJobsResponse,
    PublishJobEventsRequest,
    PublishJobEventsResponse,
    RetryJobRequest,
    RetryJobResponse,
    StreamJobEventsRequest,
    StreamJobEventsResponse,
    UpdateJobRequest,
    UpdateJobResponse,
)
from airunner.compression import GZIP

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_SERVER = "http://127.0.0.1:8080"
# A unary call that takes longer than this is stuck; the caller retries.
DEFAULT_TIMEOUT_SECONDS = 30.0
# Messages a server stream may have waiting for the trio side.
_STREAM_BUFFER = 16
# Unary calls in flight at once, each in a thread of its own (trio's shared
# default is 40 threads for the whole process).
DEFAULT_MAX_CALLS = 40


class ClientConfigError(ValueError):
    """The server address or TLS settings are unusable."""


class _Services(NamedTuple):
    """Both services' clients for one server."""

    jobs: JobServiceClientSync
    events: JobEventsServiceClientSync


@dataclass(frozen=True)
class _Failure:
    """An exception raised in a stream's thread, carried to the trio side."""

    error: BaseException


class AirunnerClient:
    """Both airunner services on one HTTP connection pool, open inside ``async with``.

    A call that finds its server unreachable is tried once on each of the other
    servers in turn before it fails, unless its messages are already spent (a
    client stream) or some of its answer has arrived (a server stream); either
    way the client stays on the next server for the calls that follow.

    Args:
        server: ``http://`` or ``https://`` URL of the server, or several (replicas).
        token: Bearer token sent with every call, if given.
        verify_tls: When False, trust whatever certificate an https server
            presents (for self-signed certificates); the host name must still match.
        max_calls: Unary calls in flight at once (each holds a thread).
    """

    def __init__(
        self,
        server: str | Sequence[str],
        *,
        token: str | None = None,
        verify_tls: bool = True,
        max_calls: int = DEFAULT_MAX_CALLS,
    ) -> None:
        urls = [server] if isinstance(server, str) else list(server)
        if not urls:
            raise ClientConfigError("no server URL given")
        self._parts = []
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ClientConfigError(f"server must be an http:// or https:// URL, got {url!r}")
            self._parts.append(parts)
        self.servers = tuple(url.rstrip("/") for url in urls)
        # The server calls go to first; moved on when it cannot be reached.
        self._current = 0
        self._verify_tls = verify_tls
        self._headers: Mapping[str, str] = {"authorization": f"Bearer {token}"} if token else {}
        self._entered = False
        # Each server's clients, opened when first used (``--no-verify`` fetches
        # the server's certificate then).
        self._opened: dict[int, _Services] = {}
        self._http: SyncClient | None = None
        # Unary calls share this client's threads; a client stream (one per
        # running job) has a thread of its own for as long as it lasts, so that
        # many running jobs never leave their heartbeats waiting for a thread.
        self._calls = trio.CapacityLimiter(max_calls)
        self._streams = trio.CapacityLimiter(math.inf)

    @property
    def server(self) -> str:
        """The server, or the servers, as a message names them."""
        return " or ".join(self.servers)

    async def __aenter__(self) -> AirunnerClient:
        """Open the connection pool (for ``--no-verify``, after fetching the
        certificate of the first server that presents one)."""
        self._entered = True
        try:
            await self._attempts(_opened)
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._entered = False
        for services in self._opened.values():
            for client in services:
                client.close()
        self._opened.clear()

    async def _services(self, index: int) -> _Services:
        """The clients for server ``index``, opened if they are not yet."""
        if not self._entered:
            raise RuntimeError("use the client in `async with AirunnerClient(...) as client:`")
        if (services := self._opened.get(index)) is not None:
            return services
        parts = self._parts[index]
        if parts.scheme == "https" and not self._verify_tls:
            certificate = await trio.to_thread.run_sync(
                _presented_certificate, parts, abandon_on_cancel=True
            )
            http = SyncClient(SyncHTTPTransport(tls_ca_cert=certificate))
        else:
            # The other servers share one pool, with the system's certificates
            # if any of them speaks https.
            if self._http is None:
                https = any(other.scheme == "https" for other in self._parts)
                transport = (
                    SyncHTTPTransport(tls_include_system_certs=True)
                    if https
                    else SyncHTTPTransport()
                )
                self._http = SyncClient(transport)
            http = self._http
        # A client span per call, its context sent along (W3C traceparent).
        tracing = [OpenTelemetryInterceptor(client=True)]
        # Gzip only for messages it shrinks, at a fast level (airunner.compression).
        options: dict[str, Any] = {
            "http_client": http,
            "interceptors": tracing,
            "send_compression": GZIP,
            "accept_compression": [GZIP],
        }
        services = _Services(
            JobServiceClientSync(self.servers[index], **options),
            JobEventsServiceClientSync(self.servers[index], **options),
        )
        self._opened[index] = services
        return services

    def _unreachable(self, index: int, error: ConnectError) -> None:
        """Server ``index`` could not be reached: the next one is tried from now on
        (unless another call already moved on from it)."""
        if len(self.servers) == 1 or self._current != index:
            return
        self._current = (index + 1) % len(self.servers)
        log.warning(
            "cannot reach the server at %s (%s); trying %s",
            self.servers[index],
            error.message,
            self.servers[self._current],
        )

    async def _attempts(
        self, attempt: Callable[[_Services], Awaitable[T]], *, failover: bool = True
    ) -> T:
        """``attempt`` on the current server; if that server cannot be reached, on
        each of the others in turn (with ``failover``), until one answers.

        Raises the last server's error when none does.
        """
        first = self._current
        tries = len(self.servers) if failover else 1
        for step in range(tries):
            index = (first + step) % len(self.servers)
            try:
                return await attempt(await self._services(index))
            except ConnectError as e:
                if e.code != Code.UNAVAILABLE:
                    raise
                self._unreachable(index, e)
                if step == tries - 1:
                    raise
        raise AssertionError("unreachable")

    async def enqueue_job(
        self, request: EnqueueJobRequest, *, rpc_timeout: float = DEFAULT_TIMEOUT_SECONDS
    ) -> EnqueueJobResponse:
        return await self._unary(lambda s: s.jobs.enqueue_job, request, rpc_timeout)

    async def update_job(
        self, request: UpdateJobRequest, *, rpc_timeout: float = DEFAULT_TIMEOUT_SECONDS
    ) -> UpdateJobResponse:
        return await self._unary(lambda s: s.jobs.update_job, request, rpc_timeout)

    async def complete_job(
        self, request: CompleteJobRequest, *, rpc_timeout: float = DEFAULT_TIMEOUT_SECONDS
    ) -> CompleteJobResponse:
        return await self._unary(lambda s: s.jobs.complete_job, request, rpc_timeout)

    async def list_jobs(
        self, request: ListJobsRequest, *, rpc_timeout: float = DEFAULT_TIMEOUT_SECONDS
    ) -> ListJobsResponse:
        return await self._unary(lambda s: s.jobs.list_jobs, request, rpc_timeout)

    async def get_job(
        self, request: GetJobRequest, *, rpc_timeout: float = DEFAULT_TIMEOUT_SECONDS
    ) -> GetJobResponse:
        return await self._unary(lambda s: s.jobs.get_job, request, rpc_timeout)

    async def cancel_job(
        self, request: CancelJobRequest, *, rpc_timeout: float = DEFAULT_TIMEOUT_SECONDS
    ) -> CancelJobResponse:
        return await self._unary(lambda s: s.jobs.cancel_job, request, rpc_timeout)

    async def retry_job(
        self, request: RetryJobRequest, *, rpc_timeout: float = DEFAULT_TIMEOUT_SECONDS
    ) -> RetryJobResponse:
        return await self._unary(lambda s: s.jobs.retry_job, request, rpc_timeout)

    def dequeue_job(
        self, request: DequeueJobRequest, *, rpc_timeout: float
    ) -> AsyncGenerator[DequeueJobResponse, None]:
        """The delivered jobs, as they come, until the server's poll window ends.

        Close the generator when done with it (``contextlib.aclosing``).

        ``rpc_timeout`` bounds the whole call (the server sees it as the call's
        deadline): make it longer than the poll window.
        """
        return self._server_stream(lambda s: s.jobs.dequeue_job, request, rpc_timeout)

    def stream_job_events(
        self, request: StreamJobEventsRequest, *, rpc_timeout: float | None = None
    ) -> AsyncGenerator[StreamJobEventsResponse, None]:
        """The job's stored events, then its live ones, until its final event."""
        return self._server_stream(lambda s: s.events.stream_job_events, request, rpc_timeout)

    async def publish_job_events(
        self,
        requests: trio.MemoryReceiveChannel[PublishJobEventsRequest],
        *,
        rpc_timeout: float | None = None,
    ) -> PublishJobEventsResponse:
        """Send every message from ``requests`` on one stream until it is closed.

        Returns once the server has stored them all and answered. The messages
        are spent by a failed call: an unreachable server is not tried again
        here, but the next call goes to the next server.
        """
        token = trio.lowlevel.current_trio_token()

        def messages() -> Iterator[PublishJobEventsRequest]:
            while True:
                try:
                    yield _receive_from_thread(requests, token)
                except (trio.EndOfChannel, trio.ClosedResourceError, trio.RunFinishedError):
                    return

        return await self._unary(
            lambda s: s.events.publish_job_events,
            messages(),
            rpc_timeout,
            limiter=self._streams,
            failover=False,
        )

    async def _unary(
        self,
        method: Callable[[_Services], Callable[..., T]],
        request: Any,
        rpc_timeout: float | None,
        *,
        limiter: trio.CapacityLimiter | None = None,
        failover: bool = True,
    ) -> T:
        async def attempt(services: _Services) -> T:
            call = partial(
                method(services), request, headers=self._headers, timeout_ms=_millis(rpc_timeout)
            )
            return await trio.to_thread.run_sync(
                call, abandon_on_cancel=True, limiter=limiter or self._calls
            )

        return await self._attempts(attempt, failover=failover)

    async def _server_stream(
        self,
        method: Callable[[_Services], Callable[..., Iterator[T]]],
        request: Any,
        rpc_timeout: float | None,
    ) -> AsyncGenerator[T, None]:
        """The stream's messages from the current server; from the next, in turn,
        while a server cannot be reached before its first message."""
        first = self._current
        for step in range(len(self.servers)):
            index = (first + step) % len(self.servers)
            received = False
            try:
                services = await self._services(index)
                async with aclosing(self._pumped(method(services), request, rpc_timeout)) as items:
                    async for item in items:
                        received = True
                        yield item
                return
            except ConnectError as e:
                if e.code != Code.UNAVAILABLE:
                    raise
                self._unreachable(index, e)
                if received or step == len(self.servers) - 1:
                    raise

    async def _pumped(
        self, method: Callable[..., Iterator[T]], request: Any, rpc_timeout: float | None
    ) -> AsyncGenerator[T, None]:
        send, receive = trio.open_memory_channel[T | _Failure](_STREAM_BUFFER)
        token = trio.lowlevel.current_trio_token()
        stop = threading.Event()

        def pump() -> None:
            try:
                for message in method(
                    request, headers=self._headers, timeout_ms=_millis(rpc_timeout)
                ):
                    if stop.is_set():
                        return
                    _send_from_thread(send, message, token)
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.RunFinishedError):
                return
            except BaseException as e:  # carried to the trio side
                if not stop.is_set():
                    _deliver(partial(send.send, _Failure(e)), token)
            finally:
                _deliver(send.aclose, token)

        # A thread of its own rather than a task's: the generator then holds no
        # nursery or cancel scope across its yields. It runs in a copy of this
        # task's context, so the call's span has this task's span as parent.
        context = contextvars.copy_context()
        trio.lowlevel.start_thread_soon(
            partial(context.run, pump), lambda _: None, name="airunner stream"
        )
        try:
            async for item in receive:
                if isinstance(item, _Failure):
                    raise item.error
                yield item
        finally:
            # The thread stops at its next message, or when the call's timeout
            # ends it; nobody waits for it.
            stop.set()
            receive.close()


async def _opened(services: _Services) -> None:
    """Nothing: opening the server's clients was the whole attempt."""
    await trio.lowlevel.checkpoint()


def _send_from_thread(
    send: trio.MemorySendChannel[T], message: T, token: trio.lowlevel.TrioToken
) -> None:
    """Put ``message`` on ``send`` from a thread, waiting while the channel is full.

    A message the channel has room for is put there by a plain call in trio's
    thread, without starting a task for it (``from_thread.run``).
    """
    try:
        trio.from_thread.run_sync(send.send_nowait, message, trio_token=token)
    except trio.WouldBlock:
        trio.from_thread.run(send.send, message, trio_token=token)


def _receive_from_thread(
    receive: trio.MemoryReceiveChannel[T], token: trio.lowlevel.TrioToken
) -> T:
    """The next message from ``receive``, taken from a thread; waits for one if none is there."""
    try:
        return trio.from_thread.run_sync(receive.receive_nowait, trio_token=token)
    except trio.WouldBlock:
        return trio.from_thread.run(receive.receive, trio_token=token)


def _deliver(call: Callable[[], Any], token: trio.lowlevel.TrioToken) -> None:
    with suppress(trio.BrokenResourceError, trio.ClosedResourceError, trio.RunFinishedError):
        trio.from_thread.run(call, trio_token=token)


def _millis(seconds: float | None) -> int | None:
    return None if seconds is None else max(1, int(seconds * 1000))


def _presented_certificate(parts: Any) -> bytes:
    """The certificate an https server presents, fetched without verifying it."""
    port = parts.port or 443
    try:
        return ssl.get_server_certificate((parts.hostname, port), timeout=10).encode()
    except OSError as e:
        raise ConnectError(
            Code.UNAVAILABLE, f"cannot fetch the certificate of {parts.hostname}:{port}: {e}"
        ) from e
