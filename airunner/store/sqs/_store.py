"""The SQS/DynamoDB store: SQS carries deliveries, DynamoDB holds the truth.

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
import time
from collections.abc import AsyncIterator, Collection, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any

import trio
from botocore.exceptions import BotoCoreError, ClientError
from protobuf.wkt import Timestamp

from airunner import telemetry
from airunner.actors import (
    TAIL_INTERVAL_SECONDS,
    AwsCallFailed,
    EventTail,
    EventWriter,
    QueuePoller,
    VisibilityExtender,
)
from airunner.api.job.v1.job_pb import (
    ExecutionConfig,
    Job,
    JobEvent,
    JobParams,
    JobResult,
    JobState,
)
from airunner.aws import THROTTLING_CODES, AwsClients
from airunner.store import (
    FINAL_STATES,
    Delivery,
    EventQuery,
    EventStream,
    InvalidArgument,
    JobPage,
    NotFound,
    ResourceExhausted,
    TaskToken,
    TaskTokenSigner,
    Unavailable,
    event_time_ms,
    last_sequence_of,
    new_job_id,
    rebased,
    rules,
)

from ._resources import JOBS_BY_QUEUE_INDEX

if TYPE_CHECKING:
    from types_aiobotocore_sqs.type_defs import MessageTypeDef

    from airunner.actors import Actor

log = logging.getLogger(__name__)

# SQS's answers to a receipt handle whose message was deleted or received again.
_RECEIPT_EXPIRED = frozenset(
    {"ReceiptHandleIsInvalid", "InvalidParameterValue", "MessageNotInflight"}
)
# Keys of the items that claim a request id for one job, in the jobs table.
_CLAIM_PREFIX = "request#"
# How long a delivery in the making may take once its message was received,
# even if the dequeuer is cancelled meanwhile.
_DELIVERY_SECONDS = 10.0


class SQSJobStore:
    """A JobStore on SQS queues and DynamoDB tables.

    Args:
        aws: Open SQS and DynamoDB clients.
        queue_urls: Queue name to SQS queue URL.
        jobs_table: The jobs table.
        events_table: The events table.
        default_visibility_timeout: Seconds a delivery stays invisible when the
            dequeuer does not say.
        token_secret: HMAC secret for task tokens, the same on every replica.
        events_ttl_days: Days events are kept (DynamoDB TTL); 0 keeps them.
        tail_interval: Seconds between looks for news that other replicas stored.
    """

    def __init__(
        self,
        aws: AwsClients,
        *,
        queue_urls: Mapping[str, str],
        jobs_table: str,
        events_table: str,
        default_visibility_timeout: int,
        token_secret: bytes,
        events_ttl_days: int = 0,
        tail_interval: float = TAIL_INTERVAL_SECONDS,
    ) -> None:
        self._aws = aws
        self._urls = dict(queue_urls)
        self._jobs_table = jobs_table
        self._events_table = events_table
        self._events_ttl_seconds = events_ttl_days * 86400
        # Wakes this replica's subscribers of a job when it publishes or finishes
        # it, or when the event tail sees another replica do so.
        self._changed: dict[str, trio.Event] = {}
        self._default_visibility = default_visibility_timeout
        self._signer = TaskTokenSigner(token_secret)
        self._pollers = {name: QueuePoller(aws.sqs, name, url) for name, url in self._urls.items()}
        self._extenders = {
            name: VisibilityExtender(aws.sqs, name, url) for name, url in self._urls.items()
        }
        self._writer = EventWriter(aws.dynamodb, events_table)
        self._tail = EventTail(
            aws.dynamodb,
            jobs_table=jobs_table,
            events_table=events_table,
            wake=self._wake,
            interval=tail_interval,
        )

    async def check_resources(self) -> None:
        """Fail now, not at the first request, if a queue or table is missing.

        Raises:
            ClientError, BotoCoreError: as AWS answered.
        """
        for url in self._urls.values():
            await self._aws.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        for table in (self._jobs_table, self._events_table):
            await self._aws.dynamodb.describe_table(TableName=table)

    @property
    def queues(self) -> Collection[str]:
        return self._urls.keys()

    def actors(self) -> Sequence[Actor]:
        return [
            *self._pollers.values(),
            *self._extenders.values(),
            self._writer,
            self._tail,
        ]

    # Jobs.

    async def enqueue_job(self, request_id: str, queue: str, params: JobParams | None) -> Job:
        params = rules.check_enqueue(request_id, queue, params, self._urls)
        now_ms = _now_ms()
        job = Job(
            job_id=new_job_id(),
            job_params=params,
            state=JobState.SCHEDULED,
            created_at=_timestamp(now_ms),
            updated_at=_timestamp(now_ms),
            execution_config=rules.default_execution_config(),
        )
        item = _job_item(job, queue, request_id)
        claim = {
            "job_id": {"S": _CLAIM_PREFIX + request_id},
            "target_job_id": {"S": job.job_id},
            "created_at": {"N": str(now_ms)},
        }
        try:
            with _aws_errors():
                # One transaction: two racing requests cannot both create a job.
                await self._aws.dynamodb.transact_write_items(
                    TransactItems=[
                        {
                            "Put": {
                                "TableName": self._jobs_table,
                                "Item": claim,
                                "ConditionExpression": "attribute_not_exists(job_id)",
                            }
                        },
                        {"Put": {"TableName": self._jobs_table, "Item": item}},
                    ]
                )
        except _TransactionCancelled:
            existing = await self._existing_job(request_id)
            if not existing.get("message_sent", {}).get("BOOL"):
                # The first request created the job but failed before its message.
                await self._send(existing)
            return _job_from_item(existing, _now_ms())
        await self._send(item)
        telemetry.jobs_enqueued.add(1, {"queue": queue})
        return job

    async def _existing_job(self, request_id: str) -> dict[str, Any]:
        claim = await self._get_item(_CLAIM_PREFIX + request_id)
        if claim is None:
            raise Unavailable("the job of this request_id is being created; retry")
        item = await self._get_item(claim["target_job_id"]["S"])
        if item is None:
            raise Unavailable("the job of this request_id is being created; retry")
        return item

    async def _send(self, item: Mapping[str, Any]) -> None:
        body = {"job_id": item["job_id"]["S"], "queue": item["queue"]["S"], "attempt": 0}
        with _aws_errors():
            await self._aws.sqs.send_message(
                QueueUrl=self._urls[item["queue"]["S"]], MessageBody=json.dumps(body)
            )
            await self._aws.dynamodb.update_item(
                TableName=self._jobs_table,
                Key={"job_id": item["job_id"]},
                UpdateExpression="SET message_sent = :yes",
                ExpressionAttributeValues={":yes": {"BOOL": True}},
            )

    async def dequeue_job(
        self, queue: str, visibility_timeout_seconds: int, *, deadline: float
    ) -> Delivery | None:
        await trio.lowlevel.checkpoint()
        rules.check_queue(queue, self._urls)
        visibility = rules.visibility_timeout(visibility_timeout_seconds, self._default_visibility)
        poller = self._pollers[queue]
        with trio.move_on_at(deadline):
            while True:
                message = await poller.take()
                # Finish what the message started even if the caller is
                # cancelled meanwhile; then hand the job back if it was.
                with trio.CancelScope(shield=True), trio.move_on_after(_DELIVERY_SECONDS):
                    delivery = await self._deliver(poller, message, visibility)
                if delivery is None:
                    continue
                try:
                    await trio.lowlevel.checkpoint_if_cancelled()
                except trio.Cancelled:
                    with trio.CancelScope(shield=True), trio.move_on_after(_DELIVERY_SECONDS):
                        await self.release_job(delivery.task_token)
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
            if not isinstance(job_id, str) or not job_id or job_id.startswith(_CLAIM_PREFIX):
                raise ValueError(job_id)
        except (ValueError, KeyError, TypeError):
            await self._drop(poller, receipt, "poison")
            return None
        item = await self._get_item(job_id)
        if item is None:
            await self._drop(poller, receipt, "poison")
            return None
        state = JobState(int(item["state"]["N"]))
        if state in FINAL_STATES:
            await self._drop(poller, receipt, "finished")
            return None
        queue = item["queue"]["S"]
        previous = int(item.get("attempt", {"N": "0"})["N"])
        base = await self._last_sequence(job_id)
        now_ms = _now_ms()
        try:
            with _aws_errors():
                await self._aws.dynamodb.update_item(
                    TableName=self._jobs_table,
                    Key={"job_id": {"S": job_id}},
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
                        ":until": {"N": str(now_ms + visibility * 1000)},
                        ":now": {"N": str(now_ms)},
                        ":base": {"N": str(base)},
                    },
                )
                await self._extenders[queue].change(receipt, visibility)
        except _ConditionFailed:
            # Another replica delivered this job meanwhile (SQS can hand a
            # message out twice); that delivery stands.
            return None
        telemetry.jobs_dequeued.add(1, {"queue": queue})
        if state == JobState.RUNNING or previous > 0:
            telemetry.jobs_redelivered.add(1, {"queue": queue})
        item["state"] = {"N": str(int(JobState.RUNNING))}
        item["updated_at"] = {"N": str(now_ms)}
        item["visible_until"] = {"N": str(now_ms + visibility * 1000)}
        token = self._signer.sign(TaskToken(job_id, queue, previous + 1, receipt))
        return Delivery(job=_job_from_item(item, now_ms), task_token=token)

    async def _drop(self, poller: QueuePoller, receipt: str, reason: str) -> None:
        """Delete a message that names no job to run (poison, or a finished job)."""
        log.info("deleting a %s message from %s", reason, poller.name)
        telemetry.messages_dropped.add(1, {"queue": poller.queue, "reason": reason})
        with _aws_errors():
            await self._aws.sqs.delete_message(QueueUrl=poller.url, ReceiptHandle=receipt)

    async def release_job(self, task_token: str) -> None:
        token, _ = await self._current(task_token)
        await self._set_visibility(token, 0, JobState.SCHEDULED)

    async def update_job(
        self, queue: str, task_token: str, visibility_timeout_seconds: int
    ) -> None:
        rules.check_queue(queue, self._urls)
        token, _ = await self._current(task_token)
        if token.queue != queue:
            raise InvalidArgument("queue does not match the task token's queue")
        visibility = rules.visibility_timeout(visibility_timeout_seconds, self._default_visibility)
        await self._set_visibility(token, visibility, JobState.RUNNING)
        telemetry.jobs_visibility_updates.add(1, {"queue": queue})

    async def _set_visibility(self, token: TaskToken, seconds: int, state: JobState) -> None:
        await self._update_current(
            token,
            "SET visible_until = :until, #state = :state",
            {":until": {"N": str(_now_ms() + seconds * 1000)}, ":state": {"N": str(int(state))}},
        )
        try:
            with _aws_errors():
                await self._extenders[token.queue].change(token.receipt_handle, seconds)
        except _ReceiptExpired:
            raise _not_current() from None

    async def _update_current(
        self,
        token: TaskToken,
        update: str,
        values: dict[str, Any],
        names: dict[str, str] | None = None,
    ) -> None:
        """Update the job item only while the token's delivery is current."""
        try:
            with _aws_errors():
                await self._aws.dynamodb.update_item(
                    TableName=self._jobs_table,
                    Key={"job_id": {"S": token.job_id}},
                    UpdateExpression=update + ", updated_at = :now",
                    ConditionExpression=(
                        "attempt = :attempt AND #state = :running AND visible_until > :now"
                    ),
                    ExpressionAttributeNames={"#state": "state", **(names or {})},
                    ExpressionAttributeValues={
                        **values,
                        ":attempt": {"N": str(token.attempt)},
                        ":running": {"N": str(int(JobState.RUNNING))},
                        ":now": {"N": str(_now_ms())},
                    },
                )
        except _ConditionFailed:
            raise _not_current() from None

    async def complete_job(self, task_token: str, result: JobResult | None) -> None:
        token = self._signer.verify(task_token)
        result = rules.check_result(result, token)
        item = await self._get_item(token.job_id)
        if item is None or item["queue"]["S"] != token.queue:
            raise InvalidArgument("task token names an unknown job")
        state = JobState(int(item["state"]["N"]))
        if state in FINAL_STATES and int(item["attempt"]["N"]) == token.attempt:
            stored = JobResult.from_json(item["result"]["S"]) if "result" in item else None
            if stored is not None and rules.same_result(stored, result):
                return
            raise InvalidArgument("the job was already completed with another result")
        final = JobState.COMPLETED if result.success else JobState.FAILED
        await self._update_current(
            token,
            "SET #state = :final, #result = :result",
            {":final": {"N": str(int(final))}, ":result": {"S": result.to_json()}},
            {"#result": "result"},
        )
        try:
            with _aws_errors():
                await self._aws.sqs.delete_message(
                    QueueUrl=self._urls[token.queue], ReceiptHandle=token.receipt_handle
                )
        except (Unavailable, ResourceExhausted, _ReceiptExpired) as e:
            # The job is final in the table; its message, if it comes back, is dropped.
            log.warning("could not delete the message of job %s: %s", token.job_id, e)
        self._wake(token.job_id)
        telemetry.jobs_completed.add(1, {"queue": token.queue, "state": final.name})

    async def _current(self, task_token: str) -> tuple[TaskToken, dict[str, Any]]:
        token = self._signer.verify(task_token)
        item = await self._get_item(token.job_id)
        if item is None or item["queue"]["S"] != token.queue:
            raise InvalidArgument("task token names an unknown job")
        if (
            JobState(int(item["state"]["N"])) != JobState.RUNNING
            or int(item.get("attempt", {"N": "0"})["N"]) != token.attempt
            or int(item.get("visible_until", {"N": "0"})["N"]) <= _now_ms()
        ):
            raise _not_current()
        return token, item

    async def list_jobs(self, queue: str, state: JobState, page: int, page_size: int) -> JobPage:
        page, page_size = rules.page_args(state, page, page_size)
        if queue:
            rules.check_queue(queue, self._urls)
        items = [item async for item in self._job_items(queue)]
        now_ms = _now_ms()
        jobs = [_job_from_item(item, now_ms) for item in items]
        jobs.sort(key=lambda job: (_ms(job.created_at), job.job_id), reverse=True)
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
                TableName=self._jobs_table,
                IndexName=JOBS_BY_QUEUE_INDEX,
                KeyConditionExpression="#queue = :queue",
                ExpressionAttributeNames={"#queue": "queue"},
                ExpressionAttributeValues={":queue": {"S": queue}},
                ScanIndexForward=False,
            )
        else:
            paginator_scan = self._aws.dynamodb.get_paginator("scan")
            pages = paginator_scan.paginate(
                TableName=self._jobs_table,
                FilterExpression="attribute_exists(#queue)",
                ExpressionAttributeNames={"#queue": "queue"},
            )
        with _aws_errors():
            async for result in pages:
                for item in result.get("Items", []):
                    yield dict(item)

    async def get_job(self, job_id: str) -> Job:
        if not job_id:
            raise InvalidArgument("job_id is required")
        item = None if job_id.startswith(_CLAIM_PREFIX) else await self._get_item(job_id)
        if item is None:
            raise NotFound(f"job {job_id} not found")
        return _job_from_item(item, _now_ms())

    async def _get_item(self, job_id: str) -> dict[str, Any] | None:
        with _aws_errors():
            response = await self._aws.dynamodb.get_item(
                TableName=self._jobs_table, Key={"job_id": {"S": job_id}}, ConsistentRead=True
            )
        item = response.get("Item")
        return dict(item) if item is not None else None

    # Events.

    async def publish_events(self, task_token: str, events: Sequence[JobEvent]) -> None:
        token, item = await self._current(task_token)
        rules.check_events(events)
        base = int(item.get("sequence_base", {"N": "0"})["N"])
        telemetry.events_publish.add(len(events), {"queue": token.queue})
        now_ms = _now_ms()
        expires = (
            str(now_ms // 1000 + self._events_ttl_seconds) if self._events_ttl_seconds else ""
        )
        items: dict[int, dict[str, Any]] = {}
        for event in events:
            stored = rebased(event, base)
            if stored.timestamp is None:
                stored.timestamp = _timestamp(now_ms)
            put: dict[str, Any] = {
                "job_id": {"S": token.job_id},
                "sequence": {"N": str(stored.sequence)},
                "timestamp": {"N": str(event_time_ms(stored))},
                "event_type": {"N": str(int(stored.event_type))},
                "event_payload": {"B": stored.to_binary()},
            }
            if expires:
                put["ttl"] = {"N": expires}
            # A sequence sent twice in one call is one item, the later.
            items[stored.sequence] = put
        with _aws_errors():
            await self._writer.write(list(items.values()))
        telemetry.events_persisted.add(len(items), {"queue": token.queue})
        self._wake(token.job_id)

    async def _last_sequence(self, job_id: str) -> int:
        """The last sequence the job's stored events cover (0 without events)."""
        with _aws_errors():
            response = await self._aws.dynamodb.query(
                TableName=self._events_table,
                KeyConditionExpression="job_id = :job",
                ExpressionAttributeValues={":job": {"S": job_id}},
                ScanIndexForward=False,
                Limit=1,
                ConsistentRead=True,
            )
        items = response.get("Items", [])
        if not items:
            return 0
        return last_sequence_of(JobEvent.from_binary(bytes(items[0]["event_payload"]["B"])))

    async def _events_after(self, job_id: str, sequence: int) -> list[JobEvent]:
        """The job's stored events after ``sequence``, in order, every page."""
        paginator = self._aws.dynamodb.get_paginator("query")
        pages = paginator.paginate(
            TableName=self._events_table,
            KeyConditionExpression="job_id = :job AND #sequence > :after",
            ExpressionAttributeNames={"#sequence": "sequence"},
            ExpressionAttributeValues={":job": {"S": job_id}, ":after": {"N": str(sequence)}},
            ConsistentRead=True,
        )
        events = []
        with _aws_errors():
            async for page in pages:
                for item in page.get("Items", []):
                    events.append(JobEvent.from_binary(bytes(item["event_payload"]["B"])))
        return events

    def changed(self, job_id: str) -> trio.Event:
        """Set when this replica stores events of the job or finishes it."""
        event = self._changed.get(job_id)
        if event is None:
            event = self._changed[job_id] = trio.Event()
        return event

    def _wake(self, job_id: str) -> None:
        event = self._changed.pop(job_id, None)
        if event is not None:
            event.set()

    async def job_is_final(self, job_id: str) -> bool:
        item = await self._get_item(job_id)
        return item is not None and JobState(int(item["state"]["N"])) in FINAL_STATES

    @asynccontextmanager
    async def subscribe_events(self, job_id: str, query: EventQuery) -> AsyncIterator[EventStream]:
        await self.get_job(job_id)
        telemetry.streams_active.add(1)
        try:
            with self._tail.watching(job_id):
                yield _Subscription(self, job_id, query)
        finally:
            telemetry.streams_active.add(-1)


class _Subscription:
    """A subscriber that reads the events table from where it left off.

    It reads again when the job changes: at once when this replica stores its
    events or finishes it, and at the event tail's next look when another
    replica does. Reading by sequence from the last one returned leaves no gap
    and no duplicate between history and live events; a slow reader holds no
    buffer at all.
    """

    def __init__(self, store: SQSJobStore, job_id: str, query: EventQuery) -> None:
        self._store = store
        self._job_id = job_id
        self._query = query
        self._after = query.from_sequence - 1
        self._ready: list[JobEvent] = []
        self._ended = False

    async def receive(self) -> JobEvent | None:
        while not self._ready:
            if self._ended:
                return None
            changed = self._store.changed(self._job_id)
            # Once the job is final no event can follow: read what is left, then end.
            final = await self._store.job_is_final(self._job_id)
            events = await self._store._events_after(self._job_id, self._after)
            if events:
                self._after = events[-1].sequence
                self._ready = [event for event in events if self._query.matches(event)]
            elif final:
                self._ended = True
            else:
                await changed.wait()
        return self._ready.pop(0)


class _TransactionCancelled(Exception):
    pass


class _ConditionFailed(Exception):
    pass


class _ReceiptExpired(Exception):
    pass


@contextmanager
def _aws_errors() -> Iterator[None]:
    """AWS failures (after botocore's retries) as store errors; conditions as markers."""
    try:
        yield
    except AwsCallFailed as e:
        # Reported by an actor, which logged the failure of the call itself.
        if e.code in _RECEIPT_EXPIRED:
            raise _ReceiptExpired() from None
        if e.code in THROTTLING_CODES or e.code == "UnprocessedItems":
            raise ResourceExhausted(f"the backend is busy ({e.message}); retry later") from None
        raise Unavailable(f"the backend failed ({e.code or 'unreachable'}); retry later") from None
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "")
        if code == "TransactionCanceledException":
            raise _TransactionCancelled() from None
        if code == "ConditionalCheckFailedException":
            raise _ConditionFailed() from None
        if code in _RECEIPT_EXPIRED:
            raise _ReceiptExpired() from None
        if code in THROTTLING_CODES:
            raise ResourceExhausted("the backend is throttling requests; retry later") from None
        log.warning("AWS call failed: %s", e)
        raise Unavailable(f"the backend failed ({code or 'error'}); retry later") from None
    except BotoCoreError as e:
        log.warning("AWS call failed: %s", e)
        raise Unavailable("the backend cannot be reached; retry later") from None


def _not_current() -> InvalidArgument:
    return InvalidArgument(
        "task token is no longer current: its delivery expired or the job finished"
    )


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _timestamp(ms: int) -> Timestamp:
    return Timestamp.from_nanos(ms * 1_000_000)


def _ms(timestamp: Timestamp | None) -> int:
    return timestamp.to_nanos() // 1_000_000 if timestamp is not None else 0


def _job_item(job: Job, queue: str, request_id: str) -> dict[str, Any]:
    params = job.job_params or JobParams()
    config = job.execution_config or ExecutionConfig()
    return {
        "job_id": {"S": job.job_id},
        "queue": {"S": queue},
        "state": {"N": str(int(job.state))},
        "job_params": _attribute(json.loads(params.to_json())),
        "request_id": {"S": request_id},
        "created_at": {"N": str(_ms(job.created_at))},
        "updated_at": {"N": str(_ms(job.updated_at))},
        "execution_config": {"B": config.to_binary()},
        "attempt": {"N": "0"},
    }


def _job_from_item(item: Mapping[str, Any], now_ms: int) -> Job:
    state = JobState(int(item["state"]["N"]))
    if state == JobState.RUNNING and int(item.get("visible_until", {"N": "0"})["N"]) <= now_ms:
        # The delivery expired: SQS shows the message again; so do we.
        state = JobState.SCHEDULED
    config = item.get("execution_config")
    return Job(
        job_id=item["job_id"]["S"],
        job_params=JobParams.from_json(json.dumps(_value(item["job_params"]))),
        state=state,
        created_at=_timestamp(int(item["created_at"]["N"])),
        updated_at=_timestamp(int(item["updated_at"]["N"])),
        execution_config=ExecutionConfig.from_binary(bytes(config["B"])) if config else None,
    )


def _attribute(value: Any) -> dict[str, Any]:
    """A JSON value as a DynamoDB attribute value."""
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, (int, float)):
        return {"N": str(value)}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, list):
        return {"L": [_attribute(v) for v in value]}
    if isinstance(value, dict):
        return {"M": {k: _attribute(v) for k, v in value.items()}}
    return {"NULL": True}


def _value(attribute: Mapping[str, Any]) -> Any:
    """A DynamoDB attribute value as a JSON value."""
    ((kind, value),) = attribute.items()
    if kind == "N":
        number = float(value)
        return int(number) if number.is_integer() else number
    if kind == "L":
        return [_value(v) for v in value]
    if kind == "M":
        return {k: _value(v) for k, v in value.items()}
    if kind == "NULL":
        return None
    return value
