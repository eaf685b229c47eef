"""airunner-cli: submit, watch, look up, cancel and retry jobs; run a worker; mint tokens."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence

from airunner import telemetry
from airunner.allocator import keep_buffers_in_heap

from . import _cancel, _get, _list, _monitor, _retry, _submit, _token, _worker
from ._common import CliError


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # A worker and a monitor move output in big messages (airunner.allocator).
    keep_buffers_in_heap()
    try:
        if args.cli_command == "worker":
            # The worker's spans are per job, each in its submitter's trace.
            with telemetry.enabled("airunner-worker"):
                return int(args.run(args))
        with (
            telemetry.enabled("airunner-cli"),
            telemetry.tracer.start_as_current_span(f"airunner-cli {args.cli_command}"),
        ):
            return int(args.run(args))
    except CliError as e:
        print(f"airunner-cli: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("airunner-cli: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Whoever read our output stopped (`list | head`): end quietly, as other
        # tools do, with the status a SIGPIPE gives; nothing more is written.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="airunner-cli", description="Talk to airunner.")
    commands = parser.add_subparsers(dest="cli_command", required=True, metavar="COMMAND")
    _submit.add_parser(commands)
    _monitor.add_parser(commands)
    _list.add_parser(commands)
    _get.add_parser(commands)
    _cancel.add_parser(commands)
    _retry.add_parser(commands)
    _worker.add_parser(commands)
    _token.add_parser(commands)
    argv = list(argv)
    # `submit [options] -- COMMAND ARG...`: what follows -- is the job's command
    # line, untouched by option parsing.
    command_line: list[str] = []
    if argv[:1] == ["submit"] and "--" in argv:
        split = argv.index("--")
        argv, command_line = argv[:split], argv[split + 1 :]
    args = parser.parse_args(argv)
    args.command_line = command_line
    return args


if __name__ == "__main__":
    sys.exit(main())
