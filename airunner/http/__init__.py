"""The HTTP front's app: Connect services, plain routes, auth and error mapping."""

from __future__ import annotations

from ._app import build_app
from ._auth import AuthConfigError, BearerAuth, load_public_key
from ._codecs import MAX_JSON_NESTING
from ._disconnect import DisconnectWatch
from ._drain import Drain
from ._handlers import DEQUEUE_POLL_WINDOW_SECONDS

__all__ = [
    "DEQUEUE_POLL_WINDOW_SECONDS",
    "MAX_JSON_NESTING",
    "AuthConfigError",
    "BearerAuth",
    "DisconnectWatch",
    "Drain",
    "build_app",
    "load_public_key",
]
