"""The ASGI app: both Connect services and the plain HTTP routes, on one port."""

from __future__ import annotations

from typing import Any

from connectrpc.interceptor import Interceptor
from connectrpc_otel import OpenTelemetryInterceptor
from hypercorn.middleware.dispatcher import TrioDispatcherMiddleware
from hypercorn.typing import ASGIFramework
from quart_trio import QuartTrio

from airunner.api.job.v1.job_connect import (
    JobEventsServiceASGIApplication,
    JobServiceASGIApplication,
)
from airunner.compression import GZIP
from airunner.store import JobStore

from ._auth import BearerAuth
from ._codecs import server_codecs
from ._disconnect import DisconnectWatch
from ._drain import Drain
from ._errors import ErrorMapping
from ._handlers import DEQUEUE_POLL_WINDOW_SECONDS, JobEventsServiceHandler, JobServiceHandler

# Largest request message accepted: a PublishJobEvents message carries a few
# output batches of at most 256 KiB each.
READ_MAX_BYTES = 8 * 1024 * 1024


def build_app(
    store: JobStore,
    *,
    auth: BearerAuth | None,
    drain: Drain,
    poll_window: float = DEQUEUE_POLL_WINDOW_SECONDS,
) -> ASGIFramework:
    """The whole HTTP surface of the server.

    Args:
        store: Where jobs and events live.
        auth: Checks bearer tokens on every RPC; None serves RPCs without auth.
            ``/health`` is always open.
        drain: Ends long polls and streams when the server begins to stop.
        poll_window: Seconds a DequeueJob waits for jobs.
    """
    # A span per RPC around everything (W3C traceparent honoured); then auth,
    # so that it runs before the request body is read.
    interceptors: list[Interceptor] = [OpenTelemetryInterceptor()]
    if auth is not None:
        interceptors.append(auth)
    interceptors.append(ErrorMapping())
    codecs = server_codecs()
    jobs = JobServiceASGIApplication(
        JobServiceHandler(store, drain, poll_window=poll_window),
        interceptors=interceptors,
        read_max_bytes=READ_MAX_BYTES,
        codecs=codecs,
        compressions=[GZIP],
    )
    events = JobEventsServiceASGIApplication(
        JobEventsServiceHandler(store, drain),
        interceptors=interceptors,
        read_max_bytes=READ_MAX_BYTES,
        codecs=codecs,
        compressions=[GZIP],
    )
    mounts: dict[str, Any] = {
        jobs.path: jobs,
        events.path: events,
        "": _routes(drain),
    }
    # Outermost, so that a request whose client has gone stops wherever it waits.
    return DisconnectWatch(_utf8_headers_only(TrioDispatcherMiddleware(mounts)))


def _utf8_headers_only(app: ASGIFramework) -> ASGIFramework:
    """Refuse a request whose headers are not UTF-8 with a 400, before anything reads
    them: connectrpc decodes them before any interceptor runs, and would answer
    500 with a traceback in the log."""

    async def checked(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            try:
                for name, value in scope["headers"]:
                    name.decode("utf-8")
                    value.decode("utf-8")
            except UnicodeDecodeError:
                body = b'{"code":"invalid_argument","message":"header values must be UTF-8"}'
                await send(
                    {
                        "type": "http.response.start",
                        "status": 400,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await app(scope, receive, send)

    return checked


def _routes(drain: Drain) -> QuartTrio:
    app = QuartTrio("airunner")

    @app.get("/health")
    async def health() -> tuple[dict[str, str], int]:
        # A draining server tells the load balancer to send new work elsewhere.
        if drain.draining:
            return {"status": "draining"}, 503
        return {"status": "ok"}, 200

    return app
