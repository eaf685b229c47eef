"""airunner-server: run the API server."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import shlex
import signal
import sys
from collections.abc import Sequence

import trio
from botocore.exceptions import BotoCoreError, ClientError

from airunner import telemetry
from airunner.allocator import keep_buffers_in_heap
from airunner.aws import open_aws_clients
from airunner.config import (
    DEFAULT_LISTEN,
    ConfigError,
    parse_listen,
    store_settings_from_env,
    token_rules_from_env,
)
from airunner.http import AuthConfigError, BearerAuth, load_public_key
from airunner.server import DEFAULT_GRACE_PERIOD_SECONDS, Server, ServerSettings
from airunner.store import rules
from airunner.store.sqs import (
    DEFAULT_EVENTS_TABLE,
    DEFAULT_JOBS_TABLE,
    Resources,
    create_resources,
    queue_names,
)

from ._common import first_leaf

log = logging.getLogger("airunner.server")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="airunner-server", description="The airunner server.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    rpc = commands.add_parser("rpc-server", help="serve the Connect API (and gRPC, gRPC-Web)")
    telemetry.add_log_format_option(rpc)
    rpc.add_argument(
        "--listen",
        default=os.environ.get("AIRUNNER_LISTEN") or DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"address to listen on (env AIRUNNER_LISTEN, default {DEFAULT_LISTEN})",
    )
    rpc.add_argument(
        "--no-auth",
        action="store_true",
        help="serve RPCs without bearer tokens (otherwise JWT_PUBLIC_KEY is required)",
    )
    rpc.add_argument(
        "--grace-period",
        type=float,
        default=DEFAULT_GRACE_PERIOD_SECONDS,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, how long in-flight calls may take to finish "
        f"(default {DEFAULT_GRACE_PERIOD_SECONDS:g})",
    )
    init = commands.add_parser(
        "init-aws",
        help="create the SQS queues and DynamoDB tables of the sqs store "
        "(against AWS_ENDPOINT_URL, such as moto's server) and print their settings",
    )
    init.add_argument("--environment", default="dev", help="queue name part (default dev)")
    init.add_argument("--jobs-table", default=DEFAULT_JOBS_TABLE)
    init.add_argument("--events-table", default=DEFAULT_EVENTS_TABLE)
    init.add_argument(
        "--max-attempts",
        type=int,
        default=rules.DEFAULT_MAX_ATTEMPTS,
        help="runs a job may have; the queues move a message to their dead-letter queue "
        f"after as many receives (default {rules.DEFAULT_MAX_ATTEMPTS})",
    )
    init.add_argument(
        "--queue",
        action="append",
        default=[],
        metavar="NAME",
        help="make this queue too (repeatable), besides default and priority; the server "
        "serves it from AIRUNNER_SQS_QUEUE_<NAME> (upper case, '-' as '_'), as printed",
    )
    args = parser.parse_args(argv)
    if args.command == "init-aws":
        return _init_aws(args)
    telemetry.configure_logging(args.log_format)
    try:
        settings = _settings(args)
        server = Server(settings)
    except (ConfigError, AuthConfigError) as e:
        print(f"airunner-server: error: {e}", file=sys.stderr)
        return 1
    keep_buffers_in_heap()
    try:
        with telemetry.enabled("airunner-server"):
            trio.run(_serve, server, settings.grace_period)
    except OSError as e:
        print(f"airunner-server: error: cannot listen on {settings.listen}: {e}", file=sys.stderr)
        return 1
    except ConfigError as e:
        print(f"airunner-server: error: {e}", file=sys.stderr)
        return 1
    return 0


def _init_aws(args: argparse.Namespace) -> int:
    if not 1 <= args.max_attempts <= rules.MAX_ATTEMPTS_LIMIT:
        print(
            f"airunner-server: error: --max-attempts must be between 1 and "
            f"{rules.MAX_ATTEMPTS_LIMIT}",
            file=sys.stderr,
        )
        return 1
    try:
        queues = queue_names(args.environment, args.queue)
    except ConfigError as e:
        print(f"airunner-server: error: {e}", file=sys.stderr)
        return 1

    async def create() -> Resources:
        async with open_aws_clients() as aws:
            return await create_resources(
                aws,
                environment=args.environment,
                jobs_table=args.jobs_table,
                events_table=args.events_table,
                max_attempts=args.max_attempts,
                queues=queues,
            )

    try:
        resources = trio.run(create)
    except (BotoCoreError, ClientError) as e:
        print(f"airunner-server: error: cannot create the AWS resources: {e}", file=sys.stderr)
        return 1
    for name, value in resources.environment().items():
        print(f"export {name}={shlex.quote(value)}")
    return 0


def _settings(args: argparse.Namespace) -> ServerSettings:
    if args.grace_period < 0:
        raise ConfigError("--grace-period must not be negative")
    store = store_settings_from_env(os.environ)
    auth = None
    if not args.no_auth:
        pem = os.environ.get("JWT_PUBLIC_KEY", "")
        if not pem:
            raise ConfigError(
                "JWT_PUBLIC_KEY is required to check bearer tokens; "
                "set it to a PEM EC P-256 public key, or pass --no-auth"
            )
        auth = BearerAuth(load_public_key(pem), token_rules_from_env(os.environ))
    return ServerSettings(
        listen=parse_listen(args.listen),
        store=store,
        auth=auth,
        grace_period=args.grace_period,
    )


async def _serve(server: Server, grace_period: float) -> None:
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signals, server, grace_period, nursery.cancel_scope)
            async with trio.open_nursery() as serving:
                await serving.start(server.run)
                _freeze_start_up()
            nursery.cancel_scope.cancel()
    except* (OSError, ConfigError) as failed:
        # A failure to bind, or to open the store, arrives wrapped in the
        # nurseries it crossed; main() reports it as one line.
        raise first_leaf(failed) from None


def _freeze_start_up() -> None:
    """Keep what start-up made out of the garbage collector's way.

    Modules, the app and the store's structures live as long as the process;
    left in the collector's generations, every full collection walks all of
    them again, a pause that grows with them and that a dispatch waiting
    behind it sees. Frozen, they are never looked at again.
    """
    gc.collect()
    gc.freeze()
    log.debug("%d objects frozen after start-up", gc.get_freeze_count())


async def _stop_on_signals(
    server: Server, grace_period: float, everything: trio.CancelScope
) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            if not server.drain.draining:
                log.info(
                    "%s: draining; in-flight calls have %g s to finish (signal again to stop now)",
                    signal.Signals(signum).name,
                    grace_period,
                )
                server.drain.begin()
            else:
                log.info("%s again: stopping now", signal.Signals(signum).name)
                everything.cancel()


if __name__ == "__main__":
    sys.exit(main())
