"""AWS clients on trio: aiobotocore with its httpx backend, traced and counted.

aiobotocore's default aiohttp backend does not run under trio; its httpx backend
does. Credentials come from the default chain (the ECS task role in
production); ``AWS_REGION`` and ``AWS_ENDPOINT_URL`` (moto in tests) are honoured.
Throttling and 5xx answers are retried by botocore's standard retry mode, with
exponential backoff and jitter.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiobotocore.config import AioConfig
from aiobotocore.httpxsession import HttpxSession
from aiobotocore.session import get_session

from airunner.telemetry._aws import instrument

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient
    from types_aiobotocore_sqs import SQSClient

# Attempts per call in botocore's standard mode (the first try included) before
# a throttled or failing call gives up.
MAX_ATTEMPTS = 5
CONNECT_TIMEOUT_SECONDS = 5.0
# Longer than SQS's longest long poll (20 s), so a receive is never cut short.
READ_TIMEOUT_SECONDS = 30.0
# Connections per client: concurrent requests (many jobs publishing, polls
# in flight) must not queue behind botocore's default of 10.
MAX_POOL_CONNECTIONS = 64


@dataclass(frozen=True)
class AwsClients:
    sqs: SQSClient
    dynamodb: DynamoDBClient


@asynccontextmanager
async def open_aws_clients() -> AsyncIterator[AwsClients]:
    """SQS and DynamoDB clients, closed on exit."""
    config = AioConfig(
        # The stubs know only the aiohttp session; httpx is the one that runs on trio.
        http_session_cls=HttpxSession,  # type: ignore[arg-type]
        retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS},
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        read_timeout=READ_TIMEOUT_SECONDS,
        max_pool_connections=MAX_POOL_CONNECTIONS,
    )
    # botocore reads AWS_DEFAULT_REGION; ECS and the seed set AWS_REGION.
    region = os.environ.get("AWS_REGION") or None
    session = get_session()
    async with AsyncExitStack() as stack:
        sqs = await stack.enter_async_context(
            session.create_client("sqs", region_name=region, config=config)
        )
        dynamodb = await stack.enter_async_context(
            session.create_client("dynamodb", region_name=region, config=config)
        )
        for client in (sqs, dynamodb):
            instrument(client)
        yield AwsClients(sqs=sqs, dynamodb=dynamodb)
