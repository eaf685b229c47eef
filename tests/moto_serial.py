"""moto's server with its DynamoDB requests run one at a time.

moto (5.2) is not atomic under concurrent requests, as DynamoDB is: it checks an
``update_item`` condition and writes without a lock, and a failed
``transact_write_items`` puts back a copy of the whole table, undoing writes
made meanwhile. Tests that race the store would measure moto's races, not ours.
This runs moto's own WSGI app and takes a lock around every request whose
target is DynamoDB; SQS requests (long polls among them) run concurrently.

Usage: python -m tests.moto_serial HOST PORT
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import run_simple

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def serialize_dynamodb(app: WSGIApp) -> WSGIApp:
    lock = threading.Lock()

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB_"):
            return app(environ, start_response)
        with lock:
            # The whole answer is made under the lock, not only its start.
            return list(app(environ, start_response))

    return wrapped


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    run_simple(
        host,
        port,
        serialize_dynamodb(DomainDispatcherApplication(create_backend_app)),
        threaded=True,
        request_handler=MotoRequestHandler,
    )


if __name__ == "__main__":
    main()
