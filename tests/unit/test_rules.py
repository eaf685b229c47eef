from __future__ import annotations

import pytest

from airunner.store import InvalidArgument
from airunner.store.rules import last_page, max_jobs


@pytest.mark.parametrize(("asked", "given"), [(0, 1), (1, 1), (10, 10)])
def test_max_jobs(asked: int, given: int) -> None:
    assert max_jobs(asked) == given


@pytest.mark.parametrize("asked", [-1, 11])
def test_max_jobs_out_of_range(asked: int) -> None:
    with pytest.raises(InvalidArgument, match="between 1 and 10"):
        max_jobs(asked)


@pytest.mark.parametrize(("total", "size", "last"), [(0, 50, 1), (50, 50, 1), (51, 50, 2)])
def test_last_page(total: int, size: int, last: int) -> None:
    assert last_page(total, size) == last
