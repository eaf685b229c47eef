"""airunner-cli token: mint a bearer token."""

from __future__ import annotations

import argparse
import os
import re
import time

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from ._common import CliError

_DURATION = re.compile(r"^(\d+)([smhd]?)$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    token = commands.add_parser(
        "token", help="print a bearer token signed with the private key in JWT_SIGNING_KEY"
    )
    token.add_argument("--subject", required=True, help="who the token is for (sub)")
    token.add_argument(
        "--ttl",
        default="1h",
        help="lifetime: 90s, 30m, 12h, 7d (default 1h; servers take at most "
        "AIRUNNER_TOKEN_MAX_LIFETIME, 30d unless set)",
    )
    token.add_argument("--audience", help="the aud claim, for a server with JWT_AUDIENCE")
    token.set_defaults(run=run)


def parse_duration(text: str) -> int:
    """Seconds in ``90``, ``90s``, ``30m``, ``12h`` or ``7d``."""
    match = _DURATION.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise CliError(f"duration must look like 90s, 30m, 12h or 7d, got {text!r}")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def run(args: argparse.Namespace) -> int:
    pem = os.environ.get("JWT_SIGNING_KEY", "")
    if not pem:
        raise CliError("JWT_SIGNING_KEY is required: a PEM EC P-256 private key")
    try:
        key = load_pem_private_key(pem.strip().encode(), password=None)
    except (ValueError, TypeError):
        raise CliError("JWT_SIGNING_KEY is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise CliError("JWT_SIGNING_KEY must be an EC P-256 private key (for ES256)")
    if not args.subject.strip():
        raise CliError("--subject must not be empty")
    now = int(time.time())
    claims = {
        "iss": "airunner",
        "sub": args.subject,
        "iat": now,
        "exp": now + parse_duration(args.ttl),
    }
    if args.audience:
        claims["aud"] = args.audience
    print(jwt.encode(claims, key, algorithm="ES256"))
    return 0
