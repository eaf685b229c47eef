"""The exit status monitor and submit give for a job's exit code."""

from __future__ import annotations

import pytest

from airunner.cli._monitor import _show
from tests.helpers import end_event


@pytest.mark.parametrize(("code", "status"), [(0, 0), (3, 3), (255, 255), (256, 1), (-(2**31), 1)])
def test_an_exit_code_becomes_a_status_that_keeps_failure(code: int, status: int) -> None:
    assert _show(end_event(1, code)) == status
