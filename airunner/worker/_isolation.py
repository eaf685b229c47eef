"""What keeps a job from the worker that runs it: process attributes and a job user."""

from __future__ import annotations

import ctypes
import os
import pwd
import sys
from dataclasses import dataclass
from pathlib import Path

# prctl(2) options, from <linux/prctl.h>.
_PR_SET_DUMPABLE = 4
_PR_SET_CHILD_SUBREAPER = 36

# Variables that may hold a secret of the worker's (its bearer token, or keys
# it was started beside). Jobs never inherit them; they are also taken out of
# the worker's environment, so that no process it starts without an explicit
# environment does either.
WORKER_SECRETS = (
    "AIRUNNER_TOKEN",
    "AIRUNNER_TOKEN_SIGNING_SECRET",
    "JWT_SIGNING_KEY",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
)


class JobUserError(ValueError):
    """The job user cannot be used; the message says why."""


@dataclass(frozen=True)
class JobUser:
    """The user a root worker runs its jobs as, with that user's groups and home."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str

    @classmethod
    def named(cls, name: str) -> JobUser:
        """Look ``name`` up; only a worker running as root may use it.

        Raises:
            JobUserError: the worker is not root, there is no such user, or it is root.
        """
        if os.geteuid() != 0:
            raise JobUserError(
                f"--job-user needs the worker to run as root (it runs as uid {os.geteuid()})"
            )
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise JobUserError(f"--job-user: no user named {name!r}") from None
        if entry.pw_uid == 0:
            raise JobUserError("--job-user must not be root: jobs would run as the worker")
        return cls(
            name=entry.pw_name,
            uid=entry.pw_uid,
            gid=entry.pw_gid,
            groups=tuple(os.getgrouplist(entry.pw_name, entry.pw_gid)),
            home=entry.pw_dir,
        )


def give_tree(root: Path, user: JobUser) -> None:
    """Make ``root`` and everything under it the job user's (symlinks themselves, not
    what they point to), so that the job can use its workspace."""
    os.lchown(root, user.uid, user.gid)
    for directory, subdirectories, files in os.walk(root):
        for name in (*subdirectories, *files):
            os.lchown(os.path.join(directory, name), user.uid, user.gid)


def make_undumpable() -> bool:
    """Keep processes of the worker's own user out of its memory and environment.

    A non-dumpable process's ``/proc/<pid>/environ``, ``mem`` and ``fd/`` are open
    to root alone, and only root may ptrace it: a job running as the worker's user
    cannot read the worker's token from them. (Its command line stays public.)
    Returns False where this cannot be done (not Linux).
    """
    return _prctl(_PR_SET_DUMPABLE, 0)


def become_subreaper() -> bool:
    """Have orphaned descendants of this process reparented to it rather than to init.

    A job's process that leaves its session (``setsid``) and whose parent dies
    becomes the worker's child, where the worker can find, end and reap it.
    Returns False where this cannot be done (not Linux).
    """
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def _prctl(option: int, value: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"prctl({option}): {os.strerror(error)}")
    return True
