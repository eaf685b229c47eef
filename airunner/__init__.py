"""airunner: a self-hosted job runner on trio, speaking Connect RPC."""

from __future__ import annotations

__version__ = "0.1.0"
