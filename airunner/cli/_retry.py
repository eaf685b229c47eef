"""airunner-cli retry: run an earlier job again, as a new job."""

from __future__ import annotations

import argparse
import uuid

from connectrpc.errors import ConnectError

from airunner.api.job.v1.job_pb import RetryJobRequest

from ._common import client_options, connected, run_interruptibly, status
from ._get import not_found_or
from ._monitor import EXIT_STATUS_HELP, Followed, add_interrupt_option, follow, on_interrupt


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    retry = commands.add_parser(
        "retry",
        parents=[client_options()],
        help="submit a job again (same parameters and secrets, same queue) as a new job",
        description="Submit a new job with the parameters of an earlier one, its secrets "
        "included, on its queue; the new job's record names the earlier one (retry of). "
        "Prints the new job's id.",
        epilog="With --follow: " + EXIT_STATUS_HELP,
    )
    retry.add_argument("job_id")
    retry.add_argument(
        "--follow", action="store_true", help="then follow the new job, as submit does"
    )
    add_interrupt_option(retry)
    retry.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    followed = Followed()
    return run_interruptibly(
        lambda: _retry(args, followed), on_interrupt(args, followed, "airunner-cli retry")
    )


async def _retry(args: argparse.Namespace, followed: Followed) -> int:
    request = RetryJobRequest(job_id=args.job_id, request_id=str(uuid.uuid4()))
    async with connected(args) as client:
        try:
            response = await client.retry_job(request)
        except ConnectError as e:
            raise not_found_or(e, args.job_id, client.server) from None
        job = response.job
        assert job is not None
        print(job.job_id, flush=True)
        if not args.follow:
            status(
                f"job {job.job_id} retries {args.job_id} on queue {job.queue or '?'}; "
                f"`airunner-cli monitor {job.job_id}` follows it"
            )
            return 0
        followed.job_id = job.job_id
        status(f"job {job.job_id} retries {args.job_id} on queue {job.queue or '?'}")
        return await follow(client, job.job_id, 0, job.queue)
