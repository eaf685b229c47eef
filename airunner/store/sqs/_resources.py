"""The AWS resources the SQS store uses: a queue per queue name (``default`` and
``priority``, and any more asked for), each with a dead-letter queue, and the
two tables of ``_schema``.

``create_resources`` makes them (for a laptop against moto, or a first try in an
account); production creates the same with Terraform (deploy/terraform).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from airunner.aws import AwsClients
from airunner.config import ConfigError, check_queue_name, queue_variable
from airunner.store import rules

from ._schema import (
    DEFAULT_EVENTS_TABLE,
    DEFAULT_JOBS_TABLE,
    EVENTS_TTL_ATTRIBUTE,
    events_table_definition,
    jobs_table_definition,
)

if TYPE_CHECKING:
    from types_aiobotocore_sqs.literals import QueueAttributeNameType

# The queues init-aws always makes (and Terraform).
QUEUE_NAMES = ("default", "priority")
# SQS's longest queue name.
MAX_SQS_QUEUE_NAME = 80
QUEUE_ATTRIBUTES: dict[QueueAttributeNameType, str] = {
    "VisibilityTimeout": "300",
    "ReceiveMessageWaitTimeSeconds": "20",
    # 14 days, SQS's longest.
    "MessageRetentionPeriod": "1209600",
    "SqsManagedSseEnabled": "true",
}


@dataclass(frozen=True)
class Resources:
    queue_urls: dict[str, str]
    dead_letter_queue_urls: dict[str, str]
    jobs_table: str
    events_table: str
    max_attempts: int = rules.DEFAULT_MAX_ATTEMPTS

    def environment(self) -> dict[str, str]:
        """The server's environment for these resources."""
        env = {"AIRUNNER_STORE_TYPE": "sqs"}
        for name, url in self.queue_urls.items():
            env[queue_variable(name)] = url
        env |= {
            "AIRUNNER_DYNAMODB_JOBS_TABLE": self.jobs_table,
            "AIRUNNER_DYNAMODB_EVENTS_TABLE": self.events_table,
            "AIRUNNER_MAX_ATTEMPTS": str(self.max_attempts),
        }
        return env


def queue_names(environment: str, extra_queues: Sequence[str]) -> list[str]:
    """The queues to make: ``QUEUE_NAMES``, then each of ``extra_queues`` once.

    Raises:
        ConfigError: a name is not a queue name, or its SQS queue's name
            (``airunner-{environment}-{name}-dlq``, the longest) would be too long.
    """
    names = list(QUEUE_NAMES)
    for name in extra_queues:
        check_queue_name(name, "--queue")
        longest = f"airunner-{environment}-{name}-dlq"
        if len(longest) > MAX_SQS_QUEUE_NAME:
            raise ConfigError(
                f"--queue: queue {name!r} makes the SQS queue name {longest!r}, longer than "
                f"SQS's {MAX_SQS_QUEUE_NAME} characters; use a shorter name"
            )
        if name not in names:
            names.append(name)
    return names


async def create_resources(
    aws: AwsClients,
    *,
    environment: str,
    jobs_table: str = DEFAULT_JOBS_TABLE,
    events_table: str = DEFAULT_EVENTS_TABLE,
    max_attempts: int = rules.DEFAULT_MAX_ATTEMPTS,
    queues: Sequence[str] = QUEUE_NAMES,
) -> Resources:
    """Create the queues (each with its DLQ) and both tables; existing ones are kept.

    ``queues`` are the queue names (``queue_names`` checks them); each is the
    SQS queue ``airunner-{environment}-{name}``.

    A queue moves a message to its DLQ after ``max_attempts`` receives: the
    store keeps receives in step with runs, so that happens when the job has
    had all its runs (docs/ARCHITECTURE.md, "Receives and attempts").
    """
    queue_urls, dlq_urls = {}, {}
    for name in queues:
        base = f"airunner-{environment}-{name}"
        dlq_url = (
            await aws.sqs.create_queue(
                QueueName=f"{base}-dlq",
                Attributes={
                    "MessageRetentionPeriod": QUEUE_ATTRIBUTES["MessageRetentionPeriod"],
                    "SqsManagedSseEnabled": "true",
                },
            )
        )["QueueUrl"]
        dlq_arn = (
            await aws.sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])
        )["Attributes"]["QueueArn"]
        redrive = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_attempts}
        queue_urls[name] = (
            await aws.sqs.create_queue(
                QueueName=base,
                Attributes=QUEUE_ATTRIBUTES | {"RedrivePolicy": json.dumps(redrive)},
            )
        )["QueueUrl"]
        dlq_urls[name] = dlq_url
    await _create_table(aws, jobs_table_definition(jobs_table))
    await _create_table(aws, events_table_definition(events_table))
    ttl = await aws.dynamodb.describe_time_to_live(TableName=events_table)
    if ttl["TimeToLiveDescription"].get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
        await aws.dynamodb.update_time_to_live(
            TableName=events_table,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": EVENTS_TTL_ATTRIBUTE},
        )
    return Resources(queue_urls, dlq_urls, jobs_table, events_table, max_attempts)


async def _create_table(aws: AwsClients, definition: dict[str, Any]) -> None:
    try:
        await aws.dynamodb.create_table(**definition)
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") != "ResourceInUseException":
            raise
    waiter = aws.dynamodb.get_waiter("table_exists")
    await waiter.wait(TableName=str(definition["TableName"]), WaiterConfig={"Delay": 1})
