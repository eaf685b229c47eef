"""BearerAuth: every RPC carries a JWT signed by the holder of the private key."""

from __future__ import annotations

import time
from typing import Any

import jwt
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from airunner.config import TokenRules

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
    """A metadata interceptor: it runs before the request body is read.

    A token must be ES256, signed by the key's holder, and carry ``exp``, no
    more than ``rules.max_lifetime`` seconds ahead (``CLOCK_SKEW_LEEWAY_SECONDS``
    are allowed either way, for clocks apart); ``iss`` and ``aud`` must be the
    rules' issuer and audience when those are given.
    """

    def __init__(
        self, public_key: ec.EllipticCurvePublicKey, rules: TokenRules | None = None
    ) -> None:
        rules = rules or TokenRules()
        self._key = public_key
        self._max_lifetime = rules.max_lifetime
        self._issuer = rules.issuer
        self._audience = rules.audience

    async def on_start(self, ctx: RequestContext[Any, Any]) -> None:
        header = ctx.request_headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ConnectError(Code.UNAUTHENTICATED, "missing bearer token")
        required = ["exp"] + ["iss"] * bool(self._issuer) + ["aud"] * bool(self._audience)
        try:
            claims = jwt.decode(
                token.strip(),
                self._key,
                algorithms=["ES256"],
                # Without JWT_AUDIENCE a token's aud is not checked (PyJWT would
                # refuse every token that has one).
                options={"require": required, "verify_aud": bool(self._audience)},
                leeway=CLOCK_SKEW_LEEWAY_SECONDS,
                issuer=self._issuer,
                audience=self._audience,
            )
        except jwt.ExpiredSignatureError:
            raise ConnectError(Code.UNAUTHENTICATED, "bearer token expired") from None
        except jwt.InvalidTokenError as e:
            raise ConnectError(Code.UNAUTHENTICATED, f"invalid bearer token: {e}") from None
        left = float(claims["exp"]) - time.time()
        if left > self._max_lifetime + CLOCK_SKEW_LEEWAY_SECONDS:
            raise ConnectError(
                Code.UNAUTHENTICATED,
                f"bearer token lives too long: at most {self._max_lifetime} s are accepted",
            )

    async def on_end(
        self, token: None, ctx: RequestContext[Any, Any], error: Exception | None
    ) -> None:
        return None
