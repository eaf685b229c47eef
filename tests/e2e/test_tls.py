"""--no-verify: a client trusts the self-signed certificate an https server presents."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path

import hypercorn.trio
import pytest
import trio
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypercorn.config import Config

from airunner.api.job.v1.job_pb import ListJobsRequest
from airunner.client import AirunnerClient
from airunner.http import Drain, build_app
from airunner.store import MemoryJobStore

pytestmark = pytest.mark.e2e


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
async def https_url(tmp_path: Path) -> AsyncIterator[str]:
    cert, key = _self_signed(tmp_path)
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.certfile, config.keyfile = str(cert), str(key)
    drain = Drain()
    app = build_app(MemoryJobStore(), auth=None, drain=drain)
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            lambda task_status: hypercorn.trio.serve(
                app, config, shutdown_trigger=drain.wait, task_status=task_status
            )
        )
        yield binds[0]
        drain.begin()


async def test_no_verify_trusts_a_self_signed_certificate(https_url: str) -> None:
    assert https_url.startswith("https://")
    async with AirunnerClient(https_url, verify_tls=False) as client:
        response = await client.list_jobs(ListJobsRequest())
    assert response.last_page == 1


async def test_self_signed_certificate_is_refused_by_default(https_url: str) -> None:
    async with AirunnerClient(https_url) as client:
        with pytest.raises(ConnectError) as info:
            await client.list_jobs(ListJobsRequest())
    assert info.value.code == Code.UNAVAILABLE
