"""The AWS resources the SQS store uses: a queue per queue name, each with a
dead-letter queue, and the two tables of ``_schema``.

``create_resources`` makes them (for a laptop against moto, or a first try in an
account); production creates the same with Terraform (deploy/terraform).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from airunner.aws import AwsClients
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

QUEUE_NAMES = ("default", "priority")
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
        env = {
            "AIRUNNER_STORE_TYPE": "sqs",
            "AIRUNNER_SQS_QUEUE_DEFAULT": self.queue_urls["default"],
            "AIRUNNER_DYNAMODB_JOBS_TABLE": self.jobs_table,
            "AIRUNNER_DYNAMODB_EVENTS_TABLE": self.events_table,
            "AIRUNNER_MAX_ATTEMPTS": str(self.max_attempts),
        }
        if "priority" in self.queue_urls:
            env["AIRUNNER_SQS_QUEUE_PRIORITY"] = self.queue_urls["priority"]
        return env


async def create_resources(
    aws: AwsClients,
    *,
    environment: str,
    jobs_table: str = DEFAULT_JOBS_TABLE,
    events_table: str = DEFAULT_EVENTS_TABLE,
    max_attempts: int = rules.DEFAULT_MAX_ATTEMPTS,
) -> Resources:
    """Create the queues (each with its DLQ) and both tables; existing ones are kept.

    A queue moves a message to its DLQ after ``max_attempts`` receives: the
    store keeps receives in step with runs, so that happens when the job has
    had all its runs (docs/ARCHITECTURE.md, "Receives and attempts").
    """
    queue_urls, dlq_urls = {}, {}
    for name in QUEUE_NAMES:
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
