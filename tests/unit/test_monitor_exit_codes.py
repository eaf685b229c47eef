"""The exit status monitor and submit give for a job's exit code, and the line
that says a later run of the job begins."""

from __future__ import annotations

import pytest

from airunner.cli._monitor import _show, attempt_line
from tests.helpers import end_event


@pytest.mark.parametrize(("code", "status"), [(0, 0), (3, 3), (255, 255), (256, 1), (-(2**31), 1)])
def test_an_exit_code_becomes_a_status_that_keeps_failure(code: int, status: int) -> None:
    assert _show(end_event(1, code)) == status


@pytest.mark.parametrize(
    ("shown", "attempt", "line"),
    [
        (0, 1, ""),  # a job's first run: nothing to say
        (1, 1, ""),
        (1, 2, "attempt 2 of the job:"),
        (0, 3, "attempt 3 of the job:"),  # followed from a later run on
        (2, 0, ""),  # an event of no run (a cancel while waiting)
        (0, 0, ""),  # stored before events named their run
    ],
)
def test_a_later_run_is_announced_once(shown: int, attempt: int, line: str) -> None:
    assert attempt_line(shown, attempt) == line
