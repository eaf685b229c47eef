"""The job lifecycle on SQS and DynamoDB: enqueue, deliver, extend, release, complete, list.

A job is an item of the jobs table; its SQS message (``{"job_id", "queue",
"attempt"}``) only says "look at this job". Every delivery bumps the item's
``attempt`` under a condition, so the item, not SQS, decides which task token
is current. Expiry needs no sweeper: SQS shows the message again when its
visibility runs out, and a RUNNING item whose ``visible_until`` passed reads as
SCHEDULED.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any

import trio

from airunner import telemetry
from airunner.actors import QueuePoller, VisibilityExtender
from airunner.api.job.v1.job_pb import Job, JobParams, JobResult, JobState
from airunner.aws import AwsClients
from airunner.store import (
    FINAL_STATES,
    Delivery,
    InvalidArgument,
    JobPage,
    NotFound,
    ResourceExhausted,
    StaleTaskToken,
    TaskToken,
    TaskTokenSigner,
    Unavailable,
    new_job_id,
    rules,
)

from . import _schema as schema
from ._aws_errors import ConditionFailed, ReceiptExpired, TransactionCancelled, aws_errors

if TYPE_CHECKING:
    from types_aiobotocore_sqs.type_defs import MessageTypeDef

log = logging.getLogger(__name__)

# How long a delivery in the making may take once its message was received,
# even if the dequeuer is cancelled meanwhile.
DELIVERY_SECONDS = 10.0


class SQSJobs:
    """The jobs half of the SQS store.

    Args:
        aws: Open SQS and DynamoDB clients.
        queue_urls: Queue name to SQS queue URL.
        jobs_table: The jobs table.
        default_visibility_timeout: Seconds a delivery stays invisible when the
            dequeuer does not say.
        signer: Signs and checks task tokens (one secret on every replica).
        last_sequence: The last sequence a job's stored events cover; a new
            delivery's events are stored after it.
    """

    def __init__(
        self,
        aws: AwsClients,
        *,
        queue_urls: Mapping[str, str],
        jobs_table: str,
        default_visibility_timeout: int,
        signer: TaskTokenSigner,
        last_sequence: Callable[[str], Awaitable[int]],
    ) -> None:
        self._aws = aws
        self._urls = dict(queue_urls)
        self._table = jobs_table
        self._default_visibility = default_visibility_timeout
        self._signer = signer
        self._last_sequence = last_sequence
        self.pollers = {name: QueuePoller(aws.sqs, name, url) for name, url in self._urls.items()}
        self.extenders = {
            name: VisibilityExtender(aws.sqs, name, url) for name, url in self._urls.items()
        }

    @property
    def queues(self) -> Collection[str]:
        return self._urls.keys()

    async def check_resources(self) -> None:
        """Fail now, not at the first request, if a queue or the table is missing.

        Raises:
            ClientError, BotoCoreError: as AWS answered.
        """
        for url in self._urls.values():
            await self._aws.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        await self._aws.dynamodb.describe_table(TableName=self._table)

    # Enqueue.

    async def enqueue(self, request_id: str, queue: str, params: JobParams | None) -> Job:
        params = rules.check_enqueue(request_id, queue, params, self._urls)
        now_ms = schema.now_ms()
        job = Job(
            job_id=new_job_id(),
            job_params=params,
            state=JobState.SCHEDULED,
            created_at=schema.timestamp(now_ms),
            updated_at=schema.timestamp(now_ms),
            execution_config=rules.default_execution_config(),
        )
        item = schema.job_item(job, queue, request_id)
        try:
            with aws_errors():
                # One transaction: two racing requests cannot both create a job.
                await self._aws.dynamodb.transact_write_items(
                    TransactItems=[
                        {
                            "Put": {
                                "TableName": self._table,
                                "Item": schema.claim_item(request_id, job.job_id, now_ms),
                                "ConditionExpression": "attribute_not_exists(job_id)",
                            }
                        },
                        {"Put": {"TableName": self._table, "Item": item}},
                    ]
                )
        except TransactionCancelled:
            existing = await self._existing_job(request_id)
            if not schema.message_sent(existing):
                # The first request created the job but failed before its message.
                await self._send(existing)
            return schema.job_from_item(existing, schema.now_ms())
        await self._send(item)
        telemetry.jobs_enqueued.add(1, {"queue": queue})
        return job

    async def _existing_job(self, request_id: str) -> dict[str, Any]:
        claim = await self.get_item(schema.claim_key(request_id))
        item = await self.get_item(schema.claimed_job_id(claim)) if claim is not None else None
        if item is None:
            raise Unavailable("the job of this request_id is being created; retry")
        return item

    async def _send(self, item: Mapping[str, Any]) -> None:
        queue = schema.queue_of(item)
        body = {"job_id": item["job_id"]["S"], "queue": queue, "attempt": 0}
        with aws_errors():
            await self._aws.sqs.send_message(
                QueueUrl=self._urls[queue], MessageBody=json.dumps(body)
            )
            await self._aws.dynamodb.update_item(
                TableName=self._table,
                Key={"job_id": item["job_id"]},
                UpdateExpression="SET message_sent = :yes",
                ExpressionAttributeValues={":yes": {"BOOL": True}},
            )

    # Deliveries.

    async def dequeue(
        self, queue: str, visibility_timeout_seconds: int, *, deadline: float
    ) -> Delivery | None:
        await trio.lowlevel.checkpoint()
        rules.check_queue(queue, self._urls)
        visibility = rules.visibility_timeout(visibility_timeout_seconds, self._default_visibility)
        poller = self.pollers[queue]
        with trio.move_on_at(deadline):
            while True:
                message = await poller.take()
                # Finish what the message started even if the caller is
                # cancelled meanwhile; then hand the job back if it was.
                with trio.CancelScope(shield=True), trio.move_on_after(DELIVERY_SECONDS):
                    delivery = await self._deliver(poller, message, visibility)
                if delivery is None:
                    continue
                try:
                    await trio.lowlevel.checkpoint_if_cancelled()
                except trio.Cancelled:
                    with trio.CancelScope(shield=True), trio.move_on_after(DELIVERY_SECONDS):
                        await self.release(delivery.task_token)
                    raise
                return delivery
        return None

    async def _deliver(
        self, poller: QueuePoller, message: MessageTypeDef, visibility: int
    ) -> Delivery | None:
        """Turn a received message into a delivery, or dispose of it."""
        receipt = message["ReceiptHandle"]
        try:
            body = json.loads(message.get("Body", ""))
            job_id = body["job_id"]
            if not isinstance(job_id, str) or not job_id or schema.is_claim_key(job_id):
                raise ValueError(job_id)
        except (ValueError, KeyError, TypeError):
            await self._drop(poller, receipt, "poison")
            return None
        item = await self.get_item(job_id)
        if item is None:
            await self._drop(poller, receipt, "poison")
            return None
        state = schema.stored_state(item)
        if state in FINAL_STATES:
            await self._drop(poller, receipt, "finished")
            return None
        queue = schema.queue_of(item)
        previous = schema.attempt_of(item)
        base = await self._last_sequence(job_id)
        now_ms = schema.now_ms()
        until_ms = now_ms + visibility * 1000
        try:
            with aws_errors():
                await self._aws.dynamodb.update_item(
                    TableName=self._table,
                    Key=schema.job_key(job_id),
                    UpdateExpression=(
                        "SET #state = :running, attempt = :attempt, receipt_handle = :receipt,"
                        " visible_until = :until, updated_at = :now, sequence_base = :base"
                    ),
                    ConditionExpression="attempt = :previous OR attribute_not_exists(attempt)",
                    ExpressionAttributeNames={"#state": "state"},
                    ExpressionAttributeValues={
                        ":running": {"N": str(int(JobState.RUNNING))},
                        ":attempt": {"N": str(previous + 1)},
                        ":previous": {"N": str(previous)},
                        ":receipt": {"S": receipt},
                        ":until": {"N": str(until_ms)},
                        ":now": {"N": str(now_ms)},
                        ":base": {"N": str(base)},
                    },
                )
                await self.extenders[queue].change(receipt, visibility)
        except ConditionFailed:
            # Another replica delivered this job meanwhile (SQS can hand a
            # message out twice); that delivery stands.
            return None
        telemetry.jobs_dequeued.add(1, {"queue": queue})
        if state == JobState.RUNNING or previous > 0:
            telemetry.jobs_redelivered.add(1, {"queue": queue})
        item["state"] = {"N": str(int(JobState.RUNNING))}
        item["updated_at"] = {"N": str(now_ms)}
        item["visible_until"] = {"N": str(until_ms)}
        token = self._signer.sign(TaskToken(job_id, queue, previous + 1, receipt))
        return Delivery(job=schema.job_from_item(item, now_ms), task_token=token)

    async def _drop(self, poller: QueuePoller, receipt: str, reason: str) -> None:
        """Delete a message that names no job to run (poison, or a finished job)."""
        log.info("deleting a %s message from %s", reason, poller.name)
        telemetry.messages_dropped.add(1, {"queue": poller.queue, "reason": reason})
        with aws_errors():
            await self._aws.sqs.delete_message(QueueUrl=poller.url, ReceiptHandle=receipt)

    async def release(self, task_token: str) -> None:
        token, _ = await self.current(task_token)
        await self._set_visibility(token, 0, JobState.SCHEDULED)

    async def update(self, queue: str, task_token: str, visibility_timeout_seconds: int) -> None:
        rules.check_queue(queue, self._urls)
        token, _ = await self.current(task_token)
        rules.check_token_queue(token, queue)
        visibility = rules.visibility_timeout(visibility_timeout_seconds, self._default_visibility)
        await self._set_visibility(token, visibility, JobState.RUNNING)
        telemetry.jobs_visibility_updates.add(1, {"queue": queue})

    async def _set_visibility(self, token: TaskToken, seconds: int, state: JobState) -> None:
        await self._update_current(
            token,
            "SET visible_until = :until, #state = :state",
            {
                ":until": {"N": str(schema.now_ms() + seconds * 1000)},
                ":state": {"N": str(int(state))},
            },
        )
        try:
            with aws_errors():
                await self.extenders[token.queue].change(token.receipt_handle, seconds)
        except ReceiptExpired:
            raise StaleTaskToken() from None

    async def complete(self, task_token: str, result: JobResult | None) -> None:
        token = self._signer.verify(task_token)
        result = rules.check_result(result, token)
        item = await self.get_item(token.job_id)
        rules.check_token_job(token, schema.queue_of(item) if item is not None else None)
        assert item is not None
        stored = schema.result_json(item)
        if schema.is_final(item) and schema.attempt_of(item) == token.attempt and stored:
            rules.check_repeated_completion(JobResult.from_json(stored), result)
            return
        final = JobState.COMPLETED if result.success else JobState.FAILED
        await self._update_current(
            token,
            "SET #state = :final, #result = :result",
            {":final": {"N": str(int(final))}, ":result": {"S": result.to_json()}},
            {"#result": "result"},
        )
        try:
            with aws_errors():
                await self._aws.sqs.delete_message(
                    QueueUrl=self._urls[token.queue], ReceiptHandle=token.receipt_handle
                )
        except (Unavailable, ResourceExhausted, ReceiptExpired) as e:
            # The job is final in the table; its message, if it comes back, is dropped.
            log.warning("could not delete the message of job %s: %s", token.job_id, e)
        telemetry.jobs_completed.add(1, {"queue": token.queue, "state": final.name})

    async def current(self, task_token: str) -> tuple[TaskToken, dict[str, Any]]:
        """The token's claims and job item, if the token's delivery is still current.

        Raises:
            InvalidArgument: a bad token, or one whose delivery is over (StaleTaskToken).
        """
        token = self._signer.verify(task_token)
        item = await self.get_item(token.job_id)
        rules.check_token_job(token, schema.queue_of(item) if item is not None else None)
        assert item is not None
        if (
            schema.stored_state(item) != JobState.RUNNING
            or schema.attempt_of(item) != token.attempt
            or schema.visible_until(item) <= schema.now_ms()
        ):
            raise StaleTaskToken()
        return token, item

    async def _update_current(
        self,
        token: TaskToken,
        update: str,
        values: dict[str, Any],
        names: dict[str, str] | None = None,
    ) -> None:
        """Update the job item only while the token's delivery is current."""
        try:
            with aws_errors():
                await self._aws.dynamodb.update_item(
                    TableName=self._table,
                    Key=schema.job_key(token.job_id),
                    UpdateExpression=update + ", updated_at = :now",
                    ConditionExpression=(
                        "attempt = :attempt AND #state = :running AND visible_until > :now"
                    ),
                    ExpressionAttributeNames={"#state": "state", **(names or {})},
                    ExpressionAttributeValues={
                        **values,
                        ":attempt": {"N": str(token.attempt)},
                        ":running": {"N": str(int(JobState.RUNNING))},
                        ":now": {"N": str(schema.now_ms())},
                    },
                )
        except ConditionFailed:
            raise StaleTaskToken() from None

    # Reads.

    async def list(self, queue: str, state: JobState, page: int, page_size: int) -> JobPage:
        page, page_size = rules.page_args(state, page, page_size)
        if queue:
            rules.check_queue(queue, self._urls)
        now_ms = schema.now_ms()
        jobs = [schema.job_from_item(item, now_ms) async for item in self._job_items(queue)]
        jobs.sort(key=lambda job: (schema.ms(job.created_at), job.job_id), reverse=True)
        if state != JobState.UNSPECIFIED:
            jobs = [job for job in jobs if job.state == state]
        start = (page - 1) * page_size
        return JobPage(
            jobs=jobs[start : start + page_size], last_page=rules.last_page(len(jobs), page_size)
        )

    async def _job_items(self, queue: str) -> AsyncIterator[dict[str, Any]]:
        """Every job item of ``queue`` (by GSI1), or of all queues (a scan)."""
        if queue:
            paginator = self._aws.dynamodb.get_paginator("query")
            pages = paginator.paginate(
                TableName=self._table,
                IndexName=schema.JOBS_BY_QUEUE_INDEX,
                KeyConditionExpression="#queue = :queue",
                ExpressionAttributeNames={"#queue": "queue"},
                ExpressionAttributeValues={":queue": {"S": queue}},
                ScanIndexForward=False,
            )
        else:
            paginator_scan = self._aws.dynamodb.get_paginator("scan")
            pages = paginator_scan.paginate(
                TableName=self._table,
                # Jobs only: claims have no queue.
                FilterExpression="attribute_exists(#queue)",
                ExpressionAttributeNames={"#queue": "queue"},
            )
        with aws_errors():
            async for result in pages:
                for item in result.get("Items", []):
                    yield dict(item)

    async def get(self, job_id: str) -> Job:
        if not job_id:
            raise InvalidArgument("job_id is required")
        item = None if schema.is_claim_key(job_id) else await self.get_item(job_id)
        if item is None:
            raise NotFound(f"job {job_id} not found")
        return schema.job_from_item(item, schema.now_ms())

    async def is_final(self, job_id: str) -> bool:
        item = await self.get_item(job_id)
        return item is not None and schema.is_final(item)

    async def get_item(self, job_id: str) -> dict[str, Any] | None:
        """The item under ``job_id``, read consistently; None if there is none."""
        with aws_errors():
            response = await self._aws.dynamodb.get_item(
                TableName=self._table, Key=schema.job_key(job_id), ConsistentRead=True
            )
        item = response.get("Item")
        return dict(item) if item is not None else None
