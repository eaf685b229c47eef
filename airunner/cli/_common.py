"""What the commands share: client options, output, and errors and how they are reported."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import trio
from connectrpc.code import Code
from connectrpc.errors import ConnectError

from airunner.client import DEFAULT_MAX_CALLS, DEFAULT_SERVER, AirunnerClient, ClientConfigError

E = TypeVar("E", bound=Exception)


class CliError(Exception):
    """A failure to report as one line, without a traceback."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def client_options() -> argparse.ArgumentParser:
    """The options of every command that talks to a server."""
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("server")
    group.add_argument(
        "--server",
        action=_ServerList,
        default=split_servers(default_server(os.environ)),
        metavar="URL",
        help="server URL; give it again (or several URLs, comma-separated) for replicas, "
        "tried in turn when one cannot be reached (env AIRUNNER_SERVER; else the address "
        f"in AIRUNNER_LISTEN, as run-local uses it; else {DEFAULT_SERVER})",
    )
    group.add_argument(
        "--token",
        help="bearer token (env AIRUNNER_TOKEN); any local user can read a command line: "
        "prefer --token-file",
    )
    group.add_argument(
        "--token-file",
        type=Path,
        metavar="PATH",
        help="read the bearer token from this file, once, at start (env AIRUNNER_TOKEN_FILE)",
    )
    group.add_argument(
        "--no-verify",
        action="store_true",
        help="trust the certificate an https server presents (self-signed certificates)",
    )
    return parser


def resolve_token(args: argparse.Namespace) -> str | None:
    """The bearer token, from ``--token``, ``--token-file``, ``AIRUNNER_TOKEN`` or
    ``AIRUNNER_TOKEN_FILE`` (a flag wins over the environment); a file is read once,
    and ``args.token`` keeps what it held.

    Raises:
        CliError: both a token and a token file are given at one level, or the
            file is unreadable or empty.
    """
    if args.token_file is not None and args.token is not None:
        raise CliError("pass --token or --token-file, not both")
    if args.token is None and args.token_file is None:
        token = os.environ.get("AIRUNNER_TOKEN") or None
        file = os.environ.get("AIRUNNER_TOKEN_FILE") or None
        if token is not None and file is not None:
            raise CliError("AIRUNNER_TOKEN and AIRUNNER_TOKEN_FILE are both set: set one")
        args.token = token
        args.token_file = Path(file) if file is not None else None
    if args.token_file is not None:
        args.token = _read_token(args.token_file)
        args.token_file = None
    return args.token  # type: ignore[no-any-return]


def _read_token(path: Path) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as e:
        raise CliError(f"cannot read the token file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise CliError(f"the token file {path} is not UTF-8 text") from None
    if not token:
        raise CliError(f"the token file {path} is empty")
    return token


class _ServerList(argparse.Action):
    """``--server``: each one adds its URLs; the first replaces the default."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        servers = getattr(namespace, self.dest)
        if servers is self.default:
            servers = []
        setattr(namespace, self.dest, [*servers, *split_servers(str(values))])


def split_servers(value: str) -> list[str]:
    """The URLs in a comma-separated list (AIRUNNER_SERVER may hold several)."""
    return [url.strip() for url in value.split(",") if url.strip()]


def default_server(env: Mapping[str, str]) -> str:
    """The server a command talks to unless --server says: AIRUNNER_SERVER, else
    the server on this machine that AIRUNNER_LISTEN moved, else run-local's."""
    if server := env.get("AIRUNNER_SERVER"):
        return server
    host, sep, port = env.get("AIRUNNER_LISTEN", "").rpartition(":")
    if not (sep and host and port.isdigit()):
        return DEFAULT_SERVER
    if host in ("0.0.0.0", "[::]"):
        # Listening everywhere: this machine's own address reaches it.
        host = "127.0.0.1"
    return f"http://{host}:{port}"


def make_client(args: argparse.Namespace, *, max_calls: int = DEFAULT_MAX_CALLS) -> AirunnerClient:
    token = resolve_token(args)
    try:
        return AirunnerClient(
            args.server, token=token, verify_tls=not args.no_verify, max_calls=max_calls
        )
    except ClientConfigError as e:
        raise CliError(str(e)) from None


@asynccontextmanager
async def connected(
    args: argparse.Namespace, *, max_calls: int = DEFAULT_MAX_CALLS
) -> AsyncIterator[AirunnerClient]:
    """An open client for ``args``; a server that cannot be reached even to fetch its
    certificate (``--no-verify``) is reported as one line, as a failed call is."""
    client = make_client(args, max_calls=max_calls)
    try:
        await client.__aenter__()
    except ConnectError as e:
        raise explain(e, client.server) from None
    try:
        yield client
    finally:
        await client.__aexit__(None, None, None)


# What a TLS client reads when the port it reached answers in plain HTTP.
_PLAIN_HTTP_SIGNS = ("InvalidContentType", "WRONG_VERSION_NUMBER", "wrong version number")


def explain(error: ConnectError, server: str) -> CliError:
    """A ConnectError as a user reads it."""
    if error.code == Code.UNAVAILABLE:
        if server.startswith("https://") and any(s in error.message for s in _PLAIN_HTTP_SIGNS):
            plain = "http://" + server.removeprefix("https://")
            return CliError(
                f"the server at {server} does not speak TLS on that port (it answered in "
                f"plain HTTP): use {plain}"
            )
        return CliError(f"cannot reach the server at {server} (is it running?): {error.message}")
    if error.code == Code.UNAUTHENTICATED:
        return CliError(
            f"the server at {server} refused the request: {error.message} "
            "(pass a token with --token-file, --token, AIRUNNER_TOKEN_FILE or AIRUNNER_TOKEN)"
        )
    if error.code == Code.DEADLINE_EXCEEDED:
        return CliError(f"the server at {server} did not answer in time")
    if error.code == Code.UNIMPLEMENTED:
        return CliError(
            f"the server at {server} does not know this call ({error.message}): it runs an "
            "older airunner; upgrade it"
        )
    return CliError(f"{error.code.value}: {error.message}")


def status(message: str) -> None:
    """A status line: on stderr, so that stdout carries only the job's output."""
    print(f"airunner: {message}", file=sys.stderr, flush=True)


def first_leaf(group: ExceptionGroup[E]) -> E:
    """The first exception in ``group`` that is not a group itself.

    An error raised inside nurseries arrives wrapped once per nursery it
    crossed; this is the one to report.
    """
    leaf = group.exceptions[0]
    return first_leaf(leaf) if isinstance(leaf, ExceptionGroup) else leaf


def run_interruptibly(
    command: Callable[[], Awaitable[int]],
    on_interrupt: Callable[[signal.Signals], Awaitable[None]] | None = None,
) -> int:
    """Run ``command`` under trio until it returns, or until SIGINT or SIGTERM.

    A signal cancels the command at once and the exit code is 128 + its number,
    as a shell reports it. Then ``on_interrupt``, if given, runs (to say what
    became of the job, or to cancel it); without it a status line names the
    signal. The handlers are installed whatever the signals' inherited
    disposition, so that a command started in the background stops too; a
    second signal while ``on_interrupt`` runs stops it too.
    """

    async def main() -> int:
        try:
            return await supervised()
        except* CliError as failed:
            # The nursery wraps the command's own error; report that one.
            raise first_leaf(failed) from None
        except* BrokenPipeError as failed:
            raise first_leaf(failed) from None

    async def supervised() -> int:
        code = 0
        received: signal.Signals | None = None
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                nonlocal code, received
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for signum in signals:
                        received = signal.Signals(signum)
                        if on_interrupt is None:
                            status(f"{received.name}: stopping")
                        code = 128 + signum
                        nursery.cancel_scope.cancel()
                        return

            nursery.start_soon(stop_on_signal)
            code = await command()
            nursery.cancel_scope.cancel()
        if received is not None and on_interrupt is not None:
            async with trio.open_nursery() as nursery:

                async def stop_on_second_signal() -> None:
                    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                        async for _ in signals:
                            status("stopped")
                            nursery.cancel_scope.cancel()
                            return

                nursery.start_soon(stop_on_second_signal)
                await on_interrupt(received)
                nursery.cancel_scope.cancel()
        return code

    return trio.run(main)
