"""The job user a root worker runs jobs as: who may name one, and what it resolves to."""

from __future__ import annotations

import os
import pwd

import pytest

from airunner.worker import JobUser, JobUserError

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="a job user needs a root worker")


@needs_root
def test_a_job_user_has_its_ids_groups_and_home() -> None:
    nobody = pwd.getpwnam("nobody")
    user = JobUser.named("nobody")
    assert (user.name, user.uid, user.gid, user.home) == (
        "nobody",
        nobody.pw_uid,
        nobody.pw_gid,
        nobody.pw_dir,
    )
    assert set(user.groups) == set(os.getgrouplist("nobody", nobody.pw_gid))


@needs_root
@pytest.mark.parametrize(
    ("name", "message"),
    [("no-such-user-here", "no user named 'no-such-user-here'"), ("root", "must not be root")],
)
def test_unusable_job_users_are_refused(name: str, message: str) -> None:
    with pytest.raises(JobUserError, match=message):
        JobUser.named(name)


def test_only_a_root_worker_may_have_a_job_user(monkeypatch: pytest.MonkeyPatch) -> None:
    # Whoever runs the tests: the worker's own uid is what is checked.
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(JobUserError, match="needs the worker to run as root"):
        JobUser.named("nobody")
