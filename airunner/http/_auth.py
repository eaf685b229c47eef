"""BearerAuth: every RPC carries a JWT signed by the holder of the private key."""

from __future__ import annotations

from typing import Any

import jwt
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key

# Tokens are minted on other machines whose clocks drift a little.
CLOCK_SKEW_LEEWAY_SECONDS = 30


class AuthConfigError(ValueError):
    """The public key given to the server is unusable."""


def load_public_key(pem: str) -> ec.EllipticCurvePublicKey:
    """Parse JWT_PUBLIC_KEY: a PEM P-256 public key.

    Raises:
        AuthConfigError: with a message fit for the operator.
    """
    try:
        key = load_pem_public_key(pem.strip().encode())
    except ValueError:
        raise AuthConfigError("JWT_PUBLIC_KEY is not a PEM public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise AuthConfigError("JWT_PUBLIC_KEY must be an EC P-256 public key (for ES256)")
    return key


class BearerAuth:
    """A metadata interceptor: it runs before the request body is read."""

    def __init__(self, public_key: ec.EllipticCurvePublicKey) -> None:
        self._key = public_key

    async def on_start(self, ctx: RequestContext[Any, Any]) -> None:
        header = ctx.request_headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ConnectError(Code.UNAUTHENTICATED, "missing bearer token")
        try:
            jwt.decode(
                token.strip(),
                self._key,
                algorithms=["ES256"],
                options={"require": ["exp"]},
                leeway=CLOCK_SKEW_LEEWAY_SECONDS,
            )
        except jwt.ExpiredSignatureError:
            raise ConnectError(Code.UNAUTHENTICATED, "bearer token expired") from None
        except jwt.InvalidTokenError as e:
            raise ConnectError(Code.UNAUTHENTICATED, f"invalid bearer token: {e}") from None

    async def on_end(
        self, token: None, ctx: RequestContext[Any, Any], error: Exception | None
    ) -> None:
        return None
