"""Checking out a job's repository into a fresh directory, safely."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import trio

from airunner.api.job.v1.job_pb import JobParams

# Transports git may use for a job's repository; others (ext::, fd::) can run
# arbitrary commands on the worker.
_ALLOWED_PROTOCOLS = "file:git:http:https:ssh"
_URL_SCHEMES = ("https://", "http://", "ssh://", "git://", "file://")
# user@host:path, git's scp-like syntax for ssh.
_SCP_LIKE = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[^:]")
_REF = re.compile(r"^[A-Za-z0-9._/@+-]+$")
# A clone that takes longer than this is stuck (a hung server, a huge repository).
CHECKOUT_TIMEOUT_SECONDS = 600.0
# The last lines of git's complaint that go into the job's error message.
_ERROR_LINES = 5


class CheckoutError(Exception):
    """The repository could not be checked out; the message says why."""


def check_repository(repository: str) -> None:
    """Refuse repository strings git would treat as options or command transports."""
    if not repository.strip() or any(c in repository for c in "\n\r\0"):
        raise CheckoutError("repository must be a URL or an absolute path")
    if repository.startswith("-"):
        raise CheckoutError(f"repository {repository!r} looks like an option")
    if "::" in repository:
        raise CheckoutError(f"repository {repository!r} names a git remote helper, not allowed")
    if repository.startswith(_URL_SCHEMES) or _SCP_LIKE.match(repository):
        return
    if "://" in repository:
        raise CheckoutError(f"repository {repository!r} uses a transport that is not allowed")
    if not os.path.isabs(repository):
        raise CheckoutError(f"repository {repository!r} must be a URL or an absolute path")


def _check_ref(kind: str, value: str) -> None:
    if value and (value.startswith("-") or not _REF.match(value)):
        raise CheckoutError(f"{kind} {value!r} is not a valid git reference")


def resolve_working_directory(root: Path, working_directory: str) -> Path:
    """``working_directory`` inside ``root``; it may not escape it, even by a symlink."""
    if not working_directory:
        return root
    if os.path.isabs(working_directory):
        raise CheckoutError("working_directory must be relative to the checkout")
    try:
        resolved = (root / working_directory).resolve()
    except (OSError, RuntimeError) as e:
        # A symlink loop, say (RuntimeError before Python 3.13).
        raise CheckoutError(f"working_directory {working_directory!r}: {e}") from None
    if not resolved.is_relative_to(root.resolve()):
        raise CheckoutError(f"working_directory {working_directory!r} leaves the checkout")
    if not resolved.is_dir():
        raise CheckoutError(f"working_directory {working_directory!r} is not a directory")
    return resolved


async def checkout(params: JobParams, destination: Path) -> Path:
    """Check out the job's repository into ``destination``; return the directory to run in.

    Without a repository the job runs in the empty ``destination``. A branch
    without a commit is cloned shallow; a commit is fetched shallow when the
    server allows it, else with its history.

    Raises:
        CheckoutError: bad input, or git failed (with the end of its message).
    """
    await trio.Path(destination).mkdir(parents=True)
    if not params.repository:
        return resolve_working_directory(destination, params.working_directory)
    check_repository(params.repository)
    _check_ref("branch", params.branch)
    _check_ref("commit", params.commit)
    with trio.move_on_after(CHECKOUT_TIMEOUT_SECONDS) as scope:
        if not params.commit:
            branch = ["--branch", params.branch] if params.branch else []
            await _git(
                "clone",
                "--quiet",
                "--depth",
                "1",
                *branch,
                "--",
                params.repository,
                str(destination),
            )
        else:
            await _git("init", "--quiet", str(destination))
            await _git("-C", str(destination), "remote", "add", "origin", "--", params.repository)
            try:
                await _git(
                    "-C",
                    str(destination),
                    "fetch",
                    "--quiet",
                    "--depth",
                    "1",
                    "origin",
                    params.commit,
                )
            except CheckoutError:
                # Servers may refuse a commit that is not a branch tip: take the history.
                ref = [params.branch] if params.branch else []
                await _git("-C", str(destination), "fetch", "--quiet", "origin", *ref)
                if not await _has_commit(destination, params.commit):
                    where = f"branch {params.branch!r} of " if params.branch else ""
                    raise CheckoutError(
                        f"commit {params.commit!r} is not in {where}{params.repository}"
                    ) from None
                await _git(
                    "-C", str(destination), "checkout", "--quiet", "--detach", params.commit
                )
            else:
                await _git("-C", str(destination), "checkout", "--quiet", "--detach", "FETCH_HEAD")
    if scope.cancelled_caught:
        raise CheckoutError(f"checkout took longer than {CHECKOUT_TIMEOUT_SECONDS:g} s")
    return resolve_working_directory(destination, params.working_directory)


async def _has_commit(destination: Path, commit: str) -> bool:
    """Whether the fetched history holds ``commit`` (a hash or a name of one)."""
    verify = ("rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}")
    done = await _run_git("-C", str(destination), *verify)
    return done.returncode == 0


async def _git(*args: str) -> None:
    done = await _run_git(*args)
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip().splitlines()[-_ERROR_LINES:]
        raise CheckoutError(
            f"git {args[2] if args[0] == '-C' else args[0]} failed: " + " / ".join(message)
        )


async def _run_git(*args: str) -> subprocess.CompletedProcess[bytes]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/"),
        # Never wait for a password nobody will type.
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ALLOW_PROTOCOL": _ALLOWED_PROTOCOLS,
        "GIT_SSH_COMMAND": "ssh -o BatchMode=yes",
    }
    return await trio.run_process(
        ["git", "-c", "protocol.ext.allow=never", "-c", "advice.detachedHead=false", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
