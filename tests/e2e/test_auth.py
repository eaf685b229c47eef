"""Bearer auth on a real server: ES256 JWTs checked before the body is read."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
import jwt
import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from cryptography.hazmat.primitives.asymmetric import ec

from airunner.api.job.v1.job_pb import DequeueJobRequest, EnqueueJobRequest, ListJobsRequest
from airunner.config import TokenRules
from airunner.http import AuthConfigError, BearerAuth, load_public_key
from tests.helpers import params, request_id

from .conftest import Clients, KeyPair, RunningServer, run_server


@pytest.fixture
async def secured(key_pair: KeyPair) -> AsyncIterator[RunningServer]:
    async with run_server(
        auth=BearerAuth(load_public_key(key_pair.public_pem)), poll_window=0.2
    ) as running:
        yield running


async def call_with(url: str, token: str | None) -> None:
    clients = Clients(url, token=token)
    try:
        await clients.call(clients.jobs.list_jobs, ListJobsRequest())
    finally:
        clients.close()


@pytest.mark.e2e
async def test_valid_token_is_accepted_on_every_kind_of_call(
    secured: RunningServer, key_pair: KeyPair
) -> None:
    clients = Clients(secured.url, token=key_pair.token())
    try:
        await clients.call(
            clients.jobs.enqueue_job,
            EnqueueJobRequest(request_id=request_id(), queue="default", job_params=params()),
        )
        deliveries = await clients.collect(
            clients.jobs.dequeue_job, DequeueJobRequest(queue="default")
        )
        assert len(deliveries) == 1
    finally:
        clients.close()


def _other_key_token() -> str:
    other = ec.generate_private_key(ec.SECP256R1())
    return jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, other, algorithm="ES256")


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("make_token", "message"),
    [
        (lambda keys: None, "missing bearer token"),
        (lambda keys: "not-a-jwt", "invalid bearer token"),
        (lambda keys: keys.token(exp_in=-3600), "bearer token expired"),
        (lambda keys: _other_key_token(), "invalid bearer token: Signature verification failed"),
        (
            lambda keys: jwt.encode({"sub": "x"}, keys.private, algorithm="ES256"),
            'invalid bearer token: Token is missing the "exp" claim',
        ),
        (
            lambda keys: jwt.encode(
                {"sub": "x", "exp": int(time.time()) + 60},
                "a-shared-secret-of-32-bytes-or-more",
                algorithm="HS256",
            ),
            "invalid bearer token",
        ),
        # A hundred years: far past the 30 days the server takes by default.
        (lambda keys: keys.token(exp_in=100 * 365 * 86400), "bearer token lives too long"),
    ],
)
async def test_bad_tokens_are_unauthenticated(
    secured: RunningServer, key_pair: KeyPair, make_token: object, message: str
) -> None:
    with pytest.raises(ConnectError) as info:
        await call_with(secured.url, make_token(key_pair))  # type: ignore[operator]
    assert info.value.code == Code.UNAUTHENTICATED
    assert message in info.value.message


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("claims", "message"),
    [
        ({"iss": "airunner", "aud": "ci"}, None),
        ({"iss": "someone-else", "aud": "ci"}, "Invalid issuer"),
        ({"aud": "ci"}, 'missing the "iss" claim'),
        ({"iss": "airunner", "aud": "prod"}, "Audience doesn't match"),
        ({"iss": "airunner"}, 'missing the "aud" claim'),
        ({"iss": "airunner", "aud": "ci", "exp_in": 3 * 3600}, "lives too long"),
    ],
)
async def test_issuer_audience_and_lifetime_are_the_servers(
    key_pair: KeyPair, claims: dict[str, object], message: str | None
) -> None:
    rules = TokenRules(max_lifetime=3600, issuer="airunner", audience="ci")
    auth = BearerAuth(load_public_key(key_pair.public_pem), rules)
    async with run_server(auth=auth, poll_window=0.2) as running:
        token = key_pair.token(**claims)  # type: ignore[arg-type]
        if message is None:
            await call_with(running.url, token)
            return
        with pytest.raises(ConnectError) as info:
            await call_with(running.url, token)
    assert info.value.code == Code.UNAUTHENTICATED
    assert message in info.value.message


@pytest.mark.e2e
@pytest.mark.parametrize("claims", [{"aud": "ci"}, {"iss": "anyone"}, {"aud": ["a", "b"]}])
async def test_issuer_and_audience_are_unchecked_when_the_server_sets_none(
    secured: RunningServer, key_pair: KeyPair, claims: dict[str, object]
) -> None:
    await call_with(secured.url, key_pair.token(**claims))  # type: ignore[arg-type]


@pytest.mark.e2e
async def test_auth_is_checked_before_the_body_is_read(secured: RunningServer) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{secured.url}/job.v1.JobService/EnqueueJob",
            content=b"{this is not json",
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 401
    assert response.json()["code"] == "unauthenticated"


@pytest.mark.e2e
async def test_health_needs_no_token(secured: RunningServer) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{secured.url}/health")
    assert response.status_code == 200


@pytest.mark.e2e
async def test_no_auth_server_takes_calls_without_token(running: RunningServer) -> None:
    await call_with(running.url, None)


@pytest.mark.parametrize(
    ("pem", "message"),
    [
        ("hello", "not a PEM public key"),
        (
            # Well-formed armour around a truncated key.
            "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n"
            "-----END PUBLIC KEY-----",
            "not a PEM public key",
        ),
    ],
)
def test_unusable_public_keys(pem: str, message: str) -> None:
    with pytest.raises(AuthConfigError, match=message):
        load_public_key(pem)


def test_public_key_must_be_p256() -> None:
    from cryptography.hazmat.primitives import serialization

    pem = (
        ec.generate_private_key(ec.SECP384R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    with pytest.raises(AuthConfigError, match="P-256"):
        load_public_key(pem)


@pytest.mark.e2e
async def test_a_header_that_is_not_utf8_gets_a_400_and_no_traceback(
    secured: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{secured.url}/job.v1.JobService/ListJobs",
            content=b"{}",
            headers={"content-type": "application/json", "x-probe": b"\xff\xfe"},
        )
        # The server is still up, and still asks for a token.
        healthy = await http.get(f"{secured.url}/health")
    assert response.status_code == 400
    assert response.json() == {
        "code": "invalid_argument",
        "message": "header values must be UTF-8",
    }
    assert healthy.status_code == 200
    assert "Traceback" not in caplog.text
    assert "Error in ASGI" not in caplog.text
