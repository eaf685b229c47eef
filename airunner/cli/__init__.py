"""Command-line entry points: ``airunner-server`` and ``airunner-cli``."""

from __future__ import annotations

from ._common import CliError
from ._list import render_table
from ._submit import job_request

__all__ = ["CliError", "job_request", "render_table"]
