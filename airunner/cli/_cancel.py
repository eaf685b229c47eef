"""airunner-cli cancel: stop a job, whether it waits for a worker or runs."""

from __future__ import annotations

import argparse

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from airunner.api.job.v1.job_pb import CancelJobRequest

from ._common import CliError, client_options, connected, run_interruptibly
from ._get import not_found_or
from ._monitor import cancel_outcome


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cancel = commands.add_parser(
        "cancel",
        parents=[client_options()],
        help="cancel a job: at once if it waits, within seconds if it runs",
        description="Cancel a job. A job waiting for a worker is cancelled at once and "
        "never runs; a running job's worker stops its process within a few seconds. "
        "A job that has already ended is left as it is (exit status 1).",
    )
    cancel.add_argument("job_id")
    cancel.add_argument("--reason", default="", metavar="TEXT", help="recorded on the job")
    cancel.set_defaults(run=lambda args: run_interruptibly(lambda: _cancel(args)))


async def _cancel(args: argparse.Namespace) -> int:
    request = CancelJobRequest(job_id=args.job_id, reason=args.reason)
    async with connected(args) as client:
        try:
            response = await client.cancel_job(request)
        except ConnectError as e:
            if e.code == Code.FAILED_PRECONDITION:
                raise CliError(e.message) from None
            raise not_found_or(e, args.job_id, client.server) from None
    print(cancel_outcome(response.job, args.job_id), flush=True)
    return 0
