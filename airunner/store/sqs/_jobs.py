"""The job lifecycle on SQS and DynamoDB: enqueue, deliver, take up, extend, release, complete.

A job is an item of the jobs table; its one SQS message only says "look at this
job". Every delivery bumps the item's ``attempt`` under a condition, so the
item, not SQS, decides which task token is current, and no delivery starts
while another holds the job. Expiry needs no sweeper: SQS shows the message
again when its visibility runs out, and a RUNNING item whose ``visible_until``
passed reads as SCHEDULED.

Receives and attempts. SQS counts every receive of a message towards the
queue's ``maxReceiveCount`` and then moves it to the dead-letter queue, while a
job's attempts count only its runs (deliveries a worker took up). The two stay
in step because a receive that does not become a run is never left on the
message: a message nobody took, a released delivery and a receive found wasted
later are *recycled*: a fresh copy is sent (its count starts again), the item
points to it, and the old one is deleted. So a message reaches the dead-letter
queue only after ``maxReceiveCount`` runs lost their worker, which, with the
queues' limit equal to the attempt limit, is when the job has none left; the
dead-letter reader then fails it. A job allowed more runs than the queue's
limit is recycled before its message's last receive.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from contextlib import suppress
from typing import TYPE_CHECKING, Any

import trio
from botocore.exceptions import BotoCoreError, ClientError

from airunner import telemetry
from airunner.actors import (
    DeadLetterReader,
    QueuePoller,
    Received,
    VisibilityExtender,
    take_first,
)
from airunner.api.job.v1.job_pb import Job, JobEvent, JobParams, JobResult, JobState
from airunner.aws import AwsClients
from airunner.store import (
    FINAL_STATES,
    Delivery,
    InvalidArgument,
    JobPage,
    NotFound,
    ResourceExhausted,
    StaleTaskToken,
    StoreError,
    TaskToken,
    TaskTokenSigner,
    Unavailable,
    last_sequence_of,
    new_job_id,
    rules,
)
from airunner.store.rules import OutputLedger

from . import _schema as schema
from ._aws_errors import ConditionFailed, ReceiptExpired, TransactionCancelled, aws_errors

if TYPE_CHECKING:
    from ._events import SQSEvents

log = logging.getLogger(__name__)

# How long a delivery in the making may take once its message was received,
# even if the dequeuer is cancelled meanwhile.
DELIVERY_SECONDS = 10.0
# A message naming a job that does not exist yet may belong to an enqueue still
# writing it; after this long it is a stray (its enqueue failed or lost a race).
STRAY_AFTER_MS = 60_000
# How soon such a young message is looked at again.
STRAY_RETRY_SECONDS = 2
# A recycled copy becomes visible this long after it is sent, so that the item
# names it before any poller receives it.
RECYCLE_DELAY = 1
# Pauses between reads of a job whose message came before the job was written
# (the enqueue writes it right after sending): about a second in all.
WRITE_PAUSES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.4)
# Pauses before each try to start a first run, while the job it names is not
# there: an enqueue writes its job just after it sends the message.
FIRST_RUN_PAUSES = (0, 0.01, 0.02)
# The visibility timeout when a message is made visible at once.
AT_ONCE = 0
# A publish trusts the job item this replica last wrote or read for its
# delivery while the delivery has this much longer to run by that item: no
# other delivery of the job can start before then. The margin covers clocks
# of replicas that differ a little.
LEASE_MARGIN_MS = 2_000
# Deliveries whose item a replica keeps for their publishes; one it forgot
# costs a GetItem at its next publish.
KEPT_LEASES = 4096


_FINAL_VALUES = [{"N": str(int(state))} for state in FINAL_STATES]
# The job item's attributes a publish does not need; left out of what is kept.
_NOT_LEASED = frozenset({"job_params", "execution_config", "result"})


class QueueUnusable(Exception):
    """A queue the store was given cannot be used; the message names it and says why."""


class _Stray(Exception):
    """The message names a job that will never exist."""


class SQSJobs:
    """The jobs half of the SQS store.

    Args:
        aws: Open SQS and DynamoDB clients.
        queue_urls: Queue name to SQS queue URL.
        jobs_table: The jobs table.
        default_visibility_timeout: Seconds a delivery stays invisible when the
            dequeuer does not say.
        signer: Signs and checks task tokens (one secret on every replica).
        events: The events half: the last stored event, events the store writes.
        max_attempts: Runs a job may have unless it says otherwise.
        confirm_seconds: How long a delivery waits to be taken up.
    """

    def __init__(
        self,
        aws: AwsClients,
        *,
        queue_urls: Mapping[str, str],
        jobs_table: str,
        default_visibility_timeout: int,
        signer: TaskTokenSigner,
        events: SQSEvents,
        max_attempts: int,
        confirm_seconds: int,
    ) -> None:
        self._aws = aws
        self._urls = dict(queue_urls)
        self._table = jobs_table
        self._default_visibility = default_visibility_timeout
        self._signer = signer
        self._events = events
        self._max_attempts = max_attempts
        self._confirm_seconds = confirm_seconds
        # Each queue's maxReceiveCount and dead-letter queue, from its redrive
        # policy (read by check_resources).
        self._max_receives: dict[str, float] = {name: math.inf for name in self._urls}
        self._dead_letter_urls: dict[str, str] = {}
        self.pollers = {
            name: QueuePoller(
                aws.sqs, name, url, hold_seconds=confirm_seconds, give_back=self._give_back
            )
            for name, url in self._urls.items()
        }
        self.extenders = {
            name: VisibilityExtender(aws.sqs, name, url) for name, url in self._urls.items()
        }
        # The job item of each delivery publishing here, by job id, as this
        # replica last wrote or read it; least recently used first.
        self._leases: OrderedDict[str, dict[str, Any]] = OrderedDict()

    @property
    def queues(self) -> Collection[str]:
        return self._urls.keys()

    def dead_letter_readers(self) -> list[DeadLetterReader]:
        """A reader per queue with a dead-letter queue (known after check_resources)."""
        return [
            DeadLetterReader(self._aws.sqs, name, url, self._dead_letter)
            for name, url in self._dead_letter_urls.items()
        ]

    async def check_resources(self) -> None:
        """Fail now, not at the first request, if a queue (or the dead-letter queue
        its redrive policy names) or the table is missing; learn each queue's
        redrive policy.

        Raises:
            QueueUnusable: a queue, named, as AWS answered.
            ClientError, BotoCoreError: the table, as AWS answered.
        """
        for name, url in self._urls.items():
            try:
                response = await self._aws.sqs.get_queue_attributes(
                    QueueUrl=url, AttributeNames=["QueueArn", "RedrivePolicy"]
                )
                attributes = {str(k): v for k, v in response.get("Attributes", {}).items()}
                policy = schema.redrive_policy(attributes)
                if policy is not None:
                    self._max_receives[name] = policy.max_receive_count
                    dead_letter = await self._aws.sqs.get_queue_url(
                        QueueName=policy.queue_name, QueueOwnerAWSAccountId=policy.account
                    )
                    self._dead_letter_urls[name] = dead_letter["QueueUrl"]
            except (ClientError, BotoCoreError) as e:
                # With several queues, which one AWS refused matters.
                raise QueueUnusable(f"queue {name} ({url}): {e}") from e
            if self._max_receives[name] < self._max_attempts:
                log.warning(
                    "queue %s moves a message to its dead-letter queue after %d receives, "
                    "fewer than AIRUNNER_MAX_ATTEMPTS (%d): jobs get only %d runs",
                    name,
                    self._max_receives[name],
                    self._max_attempts,
                    self._max_receives[name],
                )
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
            queue=queue,
        )
        # The message goes first: a job item never exists without its message,
        # whatever step an enqueue dies at. A message whose job was never
        # written (the enqueue died, or lost the race for its request id) is a
        # stray, deleted when received.
        message_id = await self._send(job.job_id, queue, request_id)
        item = schema.job_item(
            job,
            queue,
            request_id,
            message_id=message_id,
            max_attempts=rules.attempt_limit(params, self._max_attempts),
        )
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
            return schema.job_from_item(existing, schema.now_ms())
        telemetry.jobs_enqueued.add(1, {"queue": queue})
        return job

    async def _existing_job(self, request_id: str) -> dict[str, Any]:
        claim = await self.get_item(schema.claim_key(request_id))
        item = await self.get_item(schema.claimed_job_id(claim)) if claim is not None else None
        if item is None:
            raise Unavailable("the job of this request_id is being created; retry")
        return item

    async def _send(self, job_id: str, queue: str, request_id: str, *, delay: int = 0) -> str:
        """Send a message for the job, visible after ``delay`` seconds; return its id."""
        with aws_errors():
            response = await self._aws.sqs.send_message(
                QueueUrl=self._urls[queue],
                MessageBody=schema.message_body(job_id, queue, request_id),
                DelaySeconds=delay,
            )
        return response["MessageId"]

    # Deliveries.

    async def dequeue(
        self,
        queues: Sequence[str],
        visibility_timeout_seconds: int,
        *,
        deadline: float,
        worker_name: str = "",
    ) -> Delivery | None:
        await trio.lowlevel.checkpoint()
        names = rules.check_queues(queues, self._urls)
        visibility = rules.visibility_timeout(visibility_timeout_seconds, self._default_visibility)
        worker_name = rules.check_worker_name(worker_name)
        pollers = [self.pollers[name] for name in names]
        with trio.move_on_at(deadline):
            while True:
                # Each queue's poller may fill the wait; earlier queues roughly first.
                poller, received = await take_first(pollers)
                # Finish what the message started even if the caller is
                # cancelled meanwhile; then hand the job back if it was. A
                # delivery cut short by the bound leaves the message to come
                # back when its hold runs out.
                delivery = None
                with trio.CancelScope(shield=True), trio.move_on_after(DELIVERY_SECONDS):
                    delivery = await self._deliver(poller, received, visibility, worker_name)
                if delivery is None:
                    continue
                try:
                    await trio.lowlevel.checkpoint_if_cancelled()
                except trio.Cancelled:
                    with trio.CancelScope(shield=True), trio.move_on_after(DELIVERY_SECONDS):
                        try:
                            await self.release(delivery.task_token)
                        except StoreError as e:
                            # Never taken up, it comes back within the confirm window.
                            log.warning("could not release job %s: %s", delivery.job.job_id, e)
                    raise
                return delivery
        return None

    async def _deliver(
        self, poller: QueuePoller, received: Received, visibility: int, worker_name: str
    ) -> Delivery | None:
        """Turn a received message into a delivery, or dispose of it."""
        known = None
        if self._may_be_first_run(poller.queue, received, visibility):
            # A waiting poller can receive a message before its enqueue has
            # written the job (the message goes first): the write is tried
            # again a moment later, then the message is looked into.
            for pause in FIRST_RUN_PAUSES:
                await trio.sleep(pause)
                try:
                    return await self._start_first_run(
                        poller.queue, received, visibility, worker_name
                    )
                except ConditionFailed as e:
                    # Not a job waiting for its first run with this message:
                    # the item as it was says what to do.
                    known = e.item
                    if known is not None:
                        break
        item = await self._triage(poller.url, poller.queue, received, known)
        if item is None:
            return None
        message = received.message
        receipt = message["ReceiptHandle"]
        if schema.cancel_requested(item):
            await self._end_cancelled(item, poller.url, receipt)
            return None
        job_id = schema.job_id_of(item)
        queue = schema.queue_of(item)
        runs = schema.runs_of(item)
        max_attempts = schema.max_attempts_of(item, self._max_attempts)
        if runs >= max_attempts:
            await self._fail_exhausted(item, poller.url, receipt)
            return None
        count = received.receive_count
        wasted = count - 1 > schema.message_runs_of(item)
        last_receive = count >= self._max_receives[queue] and runs + 1 < max_attempts
        if wasted or last_receive:
            await self._recycle(item, poller.url, message)
            return None
        base, output = await self._close_lost_run(item, failed=False)
        # Until the worker takes it up, the delivery lasts the confirm window at
        # most, for which the poller hid the message when it was received. A
        # shorter one is set before the item says so, from a time before SQS's
        # clock starts.
        first = min(visibility, self._confirm_seconds)
        now_ms = schema.now_ms()
        until_ms = now_ms + first * 1000
        if first < self._confirm_seconds:
            try:
                with aws_errors():
                    await self.extenders[queue].change(receipt, first)
            except ReceiptExpired:
                # Received again meanwhile; that receive carries on.
                return None
        previous = schema.attempt_of(item)
        truncated = output.truncated_at is not None
        try:
            with aws_errors():
                response = await self._aws.dynamodb.update_item(
                    TableName=self._table,
                    Key=schema.job_key(job_id),
                    UpdateExpression=(
                        "SET #state = :running, attempt = :attempt, receipt_handle = :receipt,"
                        " visible_until = :until, updated_at = :now, sequence_base = :base,"
                        " visibility = :visibility, message_id = :message,"
                        " worker = :worker, output_bytes = :output_bytes"
                        + (", output_truncated_at = :output_truncated_at" if truncated else "")
                    ),
                    # Nobody delivered it meanwhile, no delivery holds it, it is
                    # not final, and this is its message.
                    ConditionExpression=(
                        "attempt = :previous"
                        " AND (#state <> :running OR visible_until <= :now)"
                        " AND NOT #state IN (:final0, :final1, :final2)"
                        " AND (message_id = :message OR attribute_not_exists(message_id))"
                    ),
                    ExpressionAttributeNames={"#state": "state"},
                    ExpressionAttributeValues={
                        ":running": {"N": str(int(JobState.RUNNING))},
                        ":attempt": {"N": str(previous + 1)},
                        ":previous": {"N": str(previous)},
                        ":receipt": {"S": receipt},
                        ":until": {"N": str(until_ms)},
                        ":now": {"N": str(now_ms)},
                        ":base": {"N": str(base)},
                        ":visibility": {"N": str(visibility)},
                        ":message": {"S": message["MessageId"]},
                        ":worker": {"S": worker_name},
                        **{":" + k: v for k, v in schema.output_attributes(output).items()},
                        ":final0": _FINAL_VALUES[0],
                        ":final1": _FINAL_VALUES[1],
                        ":final2": _FINAL_VALUES[2],
                    },
                    ReturnValues="ALL_NEW",
                )
        except ConditionFailed:
            # Another replica got there first (SQS can hand a message out twice).
            return None
        return self._delivered(dict(response["Attributes"]), now_ms)

    def _may_be_first_run(self, queue: str, received: Received, visibility: int) -> bool:
        """Whether the message may start a job's first run in one write: it is
        received for the first time (so no receive of it was wasted), is not
        its last allowed receive, and the poller's hold on it is the confirm
        window the delivery starts with."""
        return (
            received.receive_count == 1
            and self._max_receives[queue] > 1
            and visibility >= self._confirm_seconds
            and schema.parse_message_body(received.message.get("Body", "")) is not None
        )

    async def _start_first_run(
        self, queue: str, received: Received, visibility: int, worker_name: str
    ) -> Delivery:
        """Deliver a job that never ran (no run was taken up, so it has no
        events and no output) and is waiting for this message: one conditional
        write, no read before it.

        Raises:
            ConditionFailed: it is not such a job, with its item if it exists.
        """
        message = received.message
        named = schema.parse_message_body(message["Body"])
        assert named is not None
        job_id = named[0]
        now_ms = schema.now_ms()
        # The poller hid the message for the confirm window when it was
        # received, a little before now: SQS shows it again a little before
        # the item says the delivery is over, and a receive then hides it
        # until it is (``_postpone``).
        until_ms = now_ms + self._confirm_seconds * 1000
        with aws_errors():
            response = await self._aws.dynamodb.update_item(
                TableName=self._table,
                Key=schema.job_key(job_id),
                UpdateExpression=(
                    "SET #state = :running, attempt = attempt + :one,"
                    " receipt_handle = :receipt, visible_until = :until, updated_at = :now,"
                    " sequence_base = :none, visibility = :visibility, worker = :worker,"
                    " output_bytes = :none"
                ),
                ConditionExpression=(
                    "#state = :scheduled AND runs = :none AND message_id = :message"
                    " AND attribute_not_exists(cancel_requested)"
                ),
                ExpressionAttributeNames={"#state": "state"},
                ExpressionAttributeValues={
                    ":running": {"N": str(int(JobState.RUNNING))},
                    ":scheduled": {"N": str(int(JobState.SCHEDULED))},
                    ":one": {"N": "1"},
                    ":none": {"N": "0"},
                    ":receipt": {"S": message["ReceiptHandle"]},
                    ":until": {"N": str(until_ms)},
                    ":now": {"N": str(now_ms)},
                    ":visibility": {"N": str(visibility)},
                    ":message": {"S": message["MessageId"]},
                    ":worker": {"S": worker_name},
                },
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        return self._delivered(dict(response["Attributes"]), now_ms)

    def _delivered(self, item: dict[str, Any], now_ms: int) -> Delivery:
        """The delivery of the job item a delivery just wrote; kept for its publishes."""
        job_id = schema.job_id_of(item)
        queue = schema.queue_of(item)
        attempt = schema.attempt_of(item)
        telemetry.jobs_dequeued.add(1, {"queue": queue})
        if attempt > 1:
            telemetry.jobs_redelivered.add(1, {"queue": queue})
        self._keep_lease(item)
        token = self._signer.sign(TaskToken(job_id, queue, attempt, schema.receipt_of(item)))
        return Delivery(job=schema.job_from_item(item, now_ms), task_token=token)

    def _keep_lease(self, item: dict[str, Any]) -> None:
        """Keep what a publish needs of the delivery's item (not the job's parameters)."""
        job_id = schema.job_id_of(item)
        self._leases[job_id] = {k: v for k, v in item.items() if k not in _NOT_LEASED}
        self._leases.move_to_end(job_id)
        while len(self._leases) > KEPT_LEASES:
            self._leases.popitem(last=False)

    async def _triage(
        self, url: str, queue: str, received: Received, known: dict[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """The job item a received message should deliver, or None once the
        message is disposed of: a stray or a finished job's is deleted, a young
        one that names a job not yet written is looked at again soon, and the
        job's own message received while a delivery holds the job comes back
        when that delivery ends. ``known`` is the item if it was just read."""
        message = received.message
        receipt = message["ReceiptHandle"]
        named = schema.parse_message_body(message.get("Body", ""))
        if named is None:
            await self._drop(url, queue, receipt, "poison")
            return None
        job_id, request_id = named
        item = known if known is not None else await self.get_item(job_id)
        if item is None:
            try:
                written = await self._being_written(job_id, request_id, received)
            except _Stray:
                await self._drop(url, queue, receipt, "stray")
                return None
            if written is None:
                with suppress(ReceiptExpired), aws_errors():
                    await self._aws.sqs.change_message_visibility(
                        QueueUrl=url, ReceiptHandle=receipt, VisibilityTimeout=STRAY_RETRY_SECONDS
                    )
                return None
            item = written
        if schema.is_final(item):
            await self._drop(url, queue, receipt, "finished")
            return None
        own = schema.message_id_of(item)
        if own and own != message["MessageId"]:
            item = await self._becomes_own(job_id, message["MessageId"], received)
            if item is None:
                await self._drop(url, queue, receipt, "stray")
                return None
        now_ms = schema.now_ms()
        if schema.is_live(item, now_ms):
            await self._postpone(item, url, receipt, now_ms)
            return None
        return item

    async def _becomes_own(
        self, job_id: str, message_id: str, received: Received
    ) -> dict[str, Any] | None:
        """The job's item once it names this message, if the message is young: a
        recycle sends the fresh copy just before it points the item to it."""
        if schema.now_ms() - received.sent_ms > STRAY_AFTER_MS:
            return None
        for pause in WRITE_PAUSES:
            await trio.sleep(pause)
            item = await self.get_item(job_id)
            if item is None or schema.message_id_of(item) == message_id:
                return item
        return None

    async def _being_written(
        self, job_id: str, request_id: str, received: Received
    ) -> dict[str, Any] | None:
        """The job of a message whose job item was not there, if it is being written.

        An enqueue sends the message just before it writes the job (with the
        claim of its request id, in one transaction), and a waiting poller can
        be faster. Returns the item once written, or None if it is still not
        there after a second or so.

        Raises:
            _Stray: it never will be (the claim names another job, or the
                message is too old).
        """
        if not request_id or schema.now_ms() - received.sent_ms > STRAY_AFTER_MS:
            raise _Stray()
        for pause in WRITE_PAUSES:
            claim = await self.get_item(schema.claim_key(request_id))
            if claim is not None:
                if schema.claimed_job_id(claim) != job_id:
                    raise _Stray()
                return await self.get_item(job_id)
            await trio.sleep(pause)
        return None

    async def _postpone(self, item: dict[str, Any], url: str, receipt: str, now_ms: int) -> None:
        """The job's message, received again while its delivery is live (SQS can
        hand a message out twice): hide it until the delivery ends. The newest
        receipt is the one SQS honours, so the delivery carries on with it."""
        seconds = max(1, -(-(schema.visible_until(item) - now_ms) // 1000))
        if url not in self._urls.values():
            # A dead letter: looked at again once the delivery is over.
            with suppress(ReceiptExpired), aws_errors():
                await self._aws.sqs.change_message_visibility(
                    QueueUrl=url, ReceiptHandle=receipt, VisibilityTimeout=seconds
                )
            return
        try:
            with aws_errors():
                await self._aws.dynamodb.update_item(
                    TableName=self._table,
                    Key=schema.job_key(schema.job_id_of(item)),
                    UpdateExpression="SET receipt_handle = :receipt",
                    ConditionExpression="attempt = :attempt",
                    ExpressionAttributeValues={
                        ":receipt": {"S": receipt},
                        ":attempt": {"N": str(schema.attempt_of(item))},
                    },
                )
                await self._aws.sqs.change_message_visibility(
                    QueueUrl=url, ReceiptHandle=receipt, VisibilityTimeout=seconds
                )
        except (ConditionFailed, ReceiptExpired):
            # The job moved on meanwhile; the message comes back and is looked at again.
            return

    async def _recycle(self, item: Mapping[str, Any], url: str, message: Any) -> None:
        """Put a fresh copy of the job's message in its queue in place of this one,
        whose receive count is spent: the copy starts from none."""
        job_id = schema.job_id_of(item)
        queue = schema.queue_of(item)
        old = message["MessageId"]
        new = await self._send(job_id, queue, schema.request_id_of(item), delay=RECYCLE_DELAY)
        try:
            with aws_errors():
                await self._aws.dynamodb.update_item(
                    TableName=self._table,
                    Key=schema.job_key(job_id),
                    UpdateExpression="SET message_id = :new, message_runs = :none",
                    ConditionExpression="message_id = :old",
                    ExpressionAttributeValues={
                        ":new": {"S": new},
                        ":old": {"S": old},
                        ":none": {"N": "0"},
                    },
                )
        except ConditionFailed:
            # The job has another message by now: the copy is a stray, and so is this one.
            pass
        log.info("job %s: message %s replaced by %s", job_id, old, new)
        telemetry.messages_dropped.add(1, {"queue": queue, "reason": "recycled"})
        await self._delete(url, message["ReceiptHandle"])

    async def _give_back(self, received: Received) -> None:
        """A message the poller received for nobody: recycled, so that the receive
        uses up nothing."""
        message = received.message
        named = schema.parse_message_body(message.get("Body", ""))
        if named is None:
            # Poison: deleted when it is next received.
            return
        job_id, _ = named
        item = await self.get_item(job_id)
        if item is None or schema.is_final(item) or schema.is_live(item, schema.now_ms()):
            # Looked at when it comes back after its hold.
            return
        if schema.message_id_of(item) != message["MessageId"]:
            return
        await self._recycle(item, self._urls[schema.queue_of(item)], message)

    async def _close_lost_run(
        self, item: Mapping[str, Any], *, failed: bool, cancelled: str | None = None
    ) -> tuple[int, OutputLedger]:
        """If the job's last delivery was a run that lost its worker, and that run
        stored no final event, store one (``rules.lost_run_event``). Returns the
        last stored sequence and the job's output so far."""
        job_id = schema.job_id_of(item)
        base, output, closing = await self._lost_run_closing(item, failed, cancelled)
        if closing is not None:
            await self._events.store(job_id, [closing], output)
            base = closing.sequence
        return base, output

    async def _lost_run_closing(
        self, item: Mapping[str, Any], failed: bool, cancelled: str | None
    ) -> tuple[int, OutputLedger, JobEvent | None]:
        """The job's last stored sequence and output so far, and the event that
        would close its last run if that run lost its worker unclosed."""
        if schema.runs_of(item) == 0:
            # No run was taken up: the job has no events and no output yet.
            return 0, OutputLedger(), None
        found = await self._events.last_event(schema.job_id_of(item))
        last, output = found if found is not None else (None, OutputLedger())
        base = last_sequence_of(last) if last is not None else 0
        if schema.taken_up(item) and not rules.ends_run(last, schema.sequence_base(item)):
            runs = schema.runs_of(item)
            closing = rules.lost_run_event(base + 1, runs, failed=failed, cancelled=cancelled)
            return base, output, closing
        return base, output, None

    async def _end_cancelled(self, item: Mapping[str, Any], url: str, receipt: str) -> None:
        """End a job whose cancel was requested and whose delivery is over (it
        ran out, or its message came back): CANCELLED, its run closed."""
        job_id = schema.job_id_of(item)
        await self._close_lost_run(item, failed=False, cancelled=schema.cancel_reason_of(item))
        now_ms = schema.now_ms()
        try:
            with aws_errors():
                await self._aws.dynamodb.update_item(
                    TableName=self._table,
                    Key=schema.job_key(job_id),
                    UpdateExpression=(
                        "SET #state = :cancelled, updated_at = :now, finished_at = :now"
                    ),
                    ConditionExpression=(
                        "attempt = :attempt AND (#state <> :running OR visible_until <= :now)"
                        " AND NOT #state IN (:final0, :final1, :final2)"
                    ),
                    ExpressionAttributeNames={"#state": "state"},
                    ExpressionAttributeValues={
                        ":cancelled": {"N": str(int(JobState.CANCELLED))},
                        ":now": {"N": str(now_ms)},
                        ":attempt": {"N": str(schema.attempt_of(item))},
                        ":running": {"N": str(int(JobState.RUNNING))},
                        ":final0": _FINAL_VALUES[0],
                        ":final1": _FINAL_VALUES[1],
                        ":final2": _FINAL_VALUES[2],
                    },
                )
        except ConditionFailed:
            # It moved on meanwhile (another replica ended it).
            return
        log.info("job %s cancelled: its delivery is over", job_id)
        self._ended(item, JobState.CANCELLED)
        await self._delete(url, receipt)

    def _ended(self, item: Mapping[str, Any], state: JobState) -> None:
        """The store made the job final: count it, wake its subscribers."""
        job_id = schema.job_id_of(item)
        telemetry.jobs_completed.add(1, {"queue": schema.queue_of(item), "state": state.name})
        self._events.forget(job_id)
        self._events.changed(job_id)

    async def _fail_exhausted(self, item: Mapping[str, Any], url: str, receipt: str) -> None:
        """End a job that had all its runs: FAILED, "lost its worker N times"; delete
        its message if ``receipt`` is given."""
        job_id = schema.job_id_of(item)
        await self._close_lost_run(item, failed=True)
        result = rules.exhausted_result(job_id, schema.runs_of(item))
        now_ms = schema.now_ms()
        try:
            with aws_errors():
                await self._aws.dynamodb.update_item(
                    TableName=self._table,
                    Key=schema.job_key(job_id),
                    UpdateExpression=(
                        "SET #state = :failed, #result = :result, updated_at = :now,"
                        " finished_at = :now"
                    ),
                    ConditionExpression=(
                        "attempt = :attempt AND (#state <> :running OR visible_until <= :now)"
                        " AND NOT #state IN (:final0, :final1, :final2)"
                    ),
                    ExpressionAttributeNames={"#state": "state", "#result": "result"},
                    ExpressionAttributeValues={
                        ":failed": {"N": str(int(JobState.FAILED))},
                        ":result": {"S": result.to_json()},
                        ":now": {"N": str(now_ms)},
                        ":attempt": {"N": str(schema.attempt_of(item))},
                        ":running": {"N": str(int(JobState.RUNNING))},
                        ":final0": _FINAL_VALUES[0],
                        ":final1": _FINAL_VALUES[1],
                        ":final2": _FINAL_VALUES[2],
                    },
                )
        except ConditionFailed:
            # It moved on meanwhile (another replica ended it, or delivered it).
            return
        log.warning("job %s failed: %s", job_id, result.error_message)
        self._ended(item, JobState.FAILED)
        if receipt:
            await self._delete(url, receipt)

    async def _dead_letter(self, url: str, received: Received) -> None:
        """A message SQS moved to a dead-letter queue: its job lost its worker as
        often as the queue allows. It fails, unless it may run again: then its
        message goes back to its queue, fresh."""
        message = received.message
        item = await self._triage(url, "dead letters", received)
        if item is None:
            return
        if schema.cancel_requested(item):
            await self._end_cancelled(item, url, message["ReceiptHandle"])
            return
        runs = schema.runs_of(item)
        if runs >= schema.max_attempts_of(item, self._max_attempts):
            await self._fail_exhausted(item, url, message["ReceiptHandle"])
            return
        log.warning(
            "job %s: its message reached the dead-letter queue after %d runs; sending it back",
            schema.job_id_of(item),
            runs,
        )
        await self._recycle(item, url, message)

    async def _drop(self, url: str, queue: str, receipt: str, reason: str) -> None:
        """Delete a message that names no job to run."""
        log.info("deleting a %s message from %s", reason, queue)
        telemetry.messages_dropped.add(1, {"queue": queue, "reason": reason})
        await self._delete(url, receipt)

    async def _delete(self, url: str, receipt: str) -> None:
        try:
            with aws_errors():
                await self._aws.sqs.delete_message(QueueUrl=url, ReceiptHandle=receipt)
        except ReceiptExpired:
            # Received again meanwhile: that receive will see what to do with it.
            pass

    # The delivery's holder.

    async def take_up(self, token: TaskToken, item: Mapping[str, Any], visibility: int) -> None:
        """The worker took the delivery up: count a run, hide it for ``visibility``.

        Raises:
            StaleTaskToken: the delivery is over.
        """
        now_ms = schema.now_ms()
        try:
            with aws_errors():
                response = await self._aws.dynamodb.update_item(
                    TableName=self._table,
                    Key=schema.job_key(token.job_id),
                    UpdateExpression=(
                        "SET taken_up = :attempt, runs = if_not_exists(runs, :none) + :one,"
                        " message_runs = if_not_exists(message_runs, :none) + :one,"
                        " visible_until = :until, updated_at = :now, started_at = :now"
                    ),
                    ConditionExpression=(
                        "attempt = :attempt AND #state = :running AND visible_until > :now"
                        " AND (attribute_not_exists(taken_up) OR taken_up <> :attempt)"
                    ),
                    ExpressionAttributeNames={"#state": "state"},
                    ExpressionAttributeValues={
                        ":attempt": {"N": str(token.attempt)},
                        ":running": {"N": str(int(JobState.RUNNING))},
                        ":until": {"N": str(now_ms + visibility * 1000)},
                        ":now": {"N": str(now_ms)},
                        ":none": {"N": "0"},
                        ":one": {"N": "1"},
                    },
                    ReturnValues="ALL_NEW",
                )
        except ConditionFailed:
            # Over, or taken up by a concurrent call of the same holder.
            now = await self.get_item(token.job_id)
            if now is None or not (
                schema.is_live(now, schema.now_ms())
                and schema.attempt_of(now) == token.attempt
                and schema.taken_up(now)
            ):
                raise StaleTaskToken() from None
            return
        self._keep_lease(dict(response["Attributes"]))
        await self._change_visibility(token, item, visibility)

    async def release(self, task_token: str) -> None:
        """End a delivery that never reached its dequeuer: the job's message goes
        back to its queue at once, as a fresh copy (this receive used up nothing)."""
        token, item = await self.current(task_token)
        self._leases.pop(token.job_id, None)
        await self._update_current(
            token,
            "SET visible_until = :until, #state = :state",
            {
                ":until": {"N": str(schema.now_ms())},
                ":state": {"N": str(int(JobState.SCHEDULED))},
            },
        )
        message = {
            "MessageId": schema.message_id_of(item),
            "ReceiptHandle": schema.receipt_of(item),
        }
        await self._recycle(item, self._urls[schema.queue_of(item)], message)

    async def update(self, queue: str, task_token: str, visibility_timeout_seconds: int) -> None:
        rules.check_queue(queue, self._urls)
        token = self._signer.verify(task_token)
        rules.check_token_queue(token, queue)
        visibility = rules.visibility_timeout(visibility_timeout_seconds, self._default_visibility)
        try:
            # A heartbeat of a run under way: the write is its own check.
            item = await self._extend(token, visibility, condition="taken_up = :attempt")
        except StaleTaskToken:
            # Not taken up yet, or over (or no such job): read, and decide.
            token, item = await self.current(task_token)
            if not schema.taken_up(item):
                await self.take_up(token, item, visibility)
            else:
                item = await self._extend(token, visibility)
        telemetry.jobs_visibility_updates.add(1, {"queue": queue})

    async def _extend(
        self, token: TaskToken, visibility: int, *, condition: str = ""
    ) -> dict[str, Any]:
        """Make the current delivery last ``visibility`` seconds from now, in
        the item and then in SQS; return the item as written.

        Raises:
            StaleTaskToken: the delivery is over (or ``condition`` failed).
        """
        item = await self._update_current(
            token,
            "SET visible_until = :until",
            {":until": {"N": str(schema.now_ms() + visibility * 1000)}},
            condition=condition,
        )
        self._keep_lease(item)
        await self._change_visibility(token, item, visibility)
        return item

    async def _change_visibility(
        self, token: TaskToken, item: Mapping[str, Any], seconds: int
    ) -> None:
        """Hide the job's message as long as the item now says, after the item was written.

        The item decides whether the delivery is live, not SQS: if SQS refuses
        (the message was received again meanwhile, and its newer receipt is in
        the item; or it has been hidden for 12 hours, SQS's most since its
        receive), the message comes back, is found live and hidden again with a
        fresh receipt. So a refusal is tried once more with the item's receipt,
        then only logged.
        """
        receipt = schema.receipt_of(item) or token.receipt_handle
        for _ in range(2):
            try:
                with aws_errors():
                    await self.extenders[token.queue].change(receipt, seconds)
                return
            except ReceiptExpired:
                now = await self.get_item(token.job_id)
                if now is None or schema.receipt_of(now) in ("", receipt):
                    break
                receipt = schema.receipt_of(now)
        log.info(
            "job %s: its message could not be hidden for %d s; it is hidden again when it "
            "comes back",
            token.job_id,
            seconds,
        )

    async def complete(self, task_token: str, result: JobResult | None) -> None:
        token = self._signer.verify(task_token)
        result = rules.check_result(result, token)
        self._leases.pop(token.job_id, None)
        try:
            # The usual case, one write: the delivery is current, no cancel requested.
            final, item = await self._record_result(token, result, cancelled=False)
        except StaleTaskToken:
            recorded = await self._complete_after_a_change(token, result)
            if recorded is None:
                return
            final, item = recorded
        try:
            await self._delete(self._urls[token.queue], schema.receipt_of(item))
        except (Unavailable, ResourceExhausted) as e:
            # The job is final in the table; its message, if it comes back, is dropped.
            log.warning("could not delete the message of job %s: %s", token.job_id, e)
        telemetry.jobs_completed.add(1, {"queue": token.queue, "state": final.name})

    async def _complete_after_a_change(
        self, token: TaskToken, result: JobResult
    ) -> tuple[JobState, dict[str, Any]] | None:
        """CompleteJob whose first write found the delivery over or a cancel
        requested: read the job and decide. Returns the final state and item it
        recorded, or None if this repeats a completion already recorded.

        Raises:
            InvalidArgument: the token names no job; StaleTaskToken: the delivery is over.
        """
        item = await self.get_item(token.job_id)
        rules.check_token_job(token, schema.queue_of(item) if item is not None else None)
        assert item is not None
        stored = schema.result_json(item)
        if schema.is_final(item) and schema.completed_by(item) == token.attempt and stored:
            rules.check_repeated_completion(JobResult.from_json(stored), result)
            return None
        try:
            return await self._record_result(token, result, schema.cancel_requested(item))
        except StaleTaskToken:
            now = await self.get_item(token.job_id)
            stored = schema.result_json(now) if now is not None else None
            if now is not None and schema.cancel_requested(now) and not stored:
                # A cancel was requested meanwhile: the job ends CANCELLED.
                return await self._record_result(token, result, True)
            # A retry racing the first call: the first may have just completed it.
            if now is None or not stored or schema.completed_by(now) != token.attempt:
                raise
            rules.check_repeated_completion(JobResult.from_json(stored), result)
            return None

    async def _record_result(
        self, token: TaskToken, result: JobResult, cancelled: bool
    ) -> tuple[JobState, dict[str, Any]]:
        """Make the job final with its worker's result while the delivery is
        current: CANCELLED if its cancel was requested, else as the result says,
        and then only while no cancel is requested (a CancelJob that raced this
        call and succeeded must see the job end CANCELLED). Returns the state
        and the item as written."""
        if cancelled:
            final, condition = JobState.CANCELLED, ""
        else:
            final = JobState.COMPLETED if result.success else JobState.FAILED
            condition = "attribute_not_exists(cancel_requested)"
        item = await self._update_current(
            token,
            "SET #state = :final, #result = :result, completed_by = :attempt, finished_at = :now",
            {":final": {"N": str(int(final))}, ":result": {"S": result.to_json()}},
            {"#result": "result"},
            condition=condition,
        )
        return final, item

    async def holder(self, task_token: str) -> tuple[TaskToken, dict[str, Any]]:
        """What ``current`` returns, without a read while this replica wrote or
        read the delivery's item lately and by it the delivery has more than
        ``LEASE_MARGIN_MS`` to run: until then no other delivery can start, and
        its holder ends it early only with CompleteJob or ReleaseJob, which drop
        what is kept here (through this replica)."""
        token = self._signer.verify(task_token)
        item = self._leases.get(token.job_id)
        if (
            item is not None
            and schema.attempt_of(item) == token.attempt
            and schema.queue_of(item) == token.queue
            and schema.is_live(item, schema.now_ms() + LEASE_MARGIN_MS)
        ):
            self._leases.move_to_end(token.job_id)
            return token, item
        token, item = await self.current(task_token)
        self._keep_lease(item)
        return token, item

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
        *,
        condition: str = "",
    ) -> dict[str, Any]:
        """Update the job item only while the token's delivery is current (and
        ``condition`` holds, if given); return it as written.

        Raises:
            StaleTaskToken: the delivery is over, or ``condition`` failed.
        """
        try:
            with aws_errors():
                response = await self._aws.dynamodb.update_item(
                    TableName=self._table,
                    Key=schema.job_key(token.job_id),
                    UpdateExpression=update + ", updated_at = :now",
                    ConditionExpression=(
                        "attempt = :attempt AND #state = :running AND visible_until > :now"
                        + (f" AND {condition}" if condition else "")
                    ),
                    ExpressionAttributeNames={"#state": "state", **(names or {})},
                    ExpressionAttributeValues={
                        **values,
                        ":attempt": {"N": str(token.attempt)},
                        ":running": {"N": str(int(JobState.RUNNING))},
                        ":now": {"N": str(schema.now_ms())},
                    },
                    ReturnValues="ALL_NEW",
                )
        except ConditionFailed:
            raise StaleTaskToken() from None
        return dict(response["Attributes"])

    # Cancel.

    async def cancel(self, job_id: str, reason: str) -> Job:
        """CancelJob (``JobStore.cancel_job``). Each way it can go is one
        conditional write on what was read; if the job moved on meanwhile (a
        delivery, a take-up, a completion), it is read again and decided anew."""
        reason = rules.check_cancel_reason(reason)
        if not job_id:
            raise InvalidArgument("job_id is required")
        while True:
            item = None if schema.is_claim_key(job_id) else await self.get_item(job_id)
            if item is None:
                raise NotFound(f"job {job_id} not found")
            now_ms = schema.now_ms()
            job = schema.job_from_item(item, now_ms)
            if job.state in FINAL_STATES:
                # CANCELLED included (shown as such while its message has not come
                # back to say so): a second cancel of a cancelled job says so.
                raise rules.already_ended(job_id, job.state)
            if schema.cancel_requested(item):
                # Asked before; RUNNING until its worker stops it.
                return job
            if schema.is_live(item, now_ms) and schema.taken_up(item):
                done = await self._request_cancel(item, reason, now_ms)
            elif (
                schema.taken_up(item)
                and not schema.is_live(item, now_ms)
                and schema.runs_of(item) >= schema.max_attempts_of(item, self._max_attempts)
            ):
                # Its last run lost its worker: it has failed, though its
                # message has not come back to say so yet.
                await self._fail_exhausted(item, self._urls[schema.queue_of(item)], "")
                done = False
            else:
                done = await self._cancel_at_once(item, reason, now_ms)
            if done:
                item = await self.get_item(job_id)
                assert item is not None
                return schema.job_from_item(item, schema.now_ms())

    async def _request_cancel(self, item: Mapping[str, Any], reason: str, now_ms: int) -> bool:
        """Mark a run for its worker to stop; False if the job moved on meanwhile."""
        job_id = schema.job_id_of(item)
        try:
            with aws_errors():
                await self._aws.dynamodb.update_item(
                    TableName=self._table,
                    Key=schema.job_key(job_id),
                    UpdateExpression=(
                        "SET cancel_requested = :true, cancel_reason = :reason, updated_at = :now"
                    ),
                    # Still this run (not completed, not another delivery);
                    # complete_job writes a result only while this is unset.
                    ConditionExpression=(
                        "attempt = :attempt AND #state = :running AND taken_up = :attempt"
                        " AND attribute_not_exists(cancel_requested)"
                    ),
                    ExpressionAttributeNames={"#state": "state"},
                    ExpressionAttributeValues={
                        ":true": {"BOOL": True},
                        ":reason": {"S": reason},
                        ":now": {"N": str(now_ms)},
                        ":attempt": {"N": str(schema.attempt_of(item))},
                        ":running": {"N": str(int(JobState.RUNNING))},
                    },
                )
        except ConditionFailed:
            return False
        log.info("job %s: cancel requested (%s)", job_id, reason or "no reason given")
        self._events.changed(job_id)
        return True

    async def _cancel_at_once(self, item: Mapping[str, Any], reason: str, now_ms: int) -> bool:
        """Cancel a job no run of which is under way (waiting in its queue, or
        delivered but not taken up): CANCELLED, with the event that says why
        stored in the same transaction. Its message stays in SQS, and is dropped
        when next received (a final job's message always is); a delivery's
        message is deleted now if its receipt still works. False if the job
        moved on meanwhile."""
        job_id = schema.job_id_of(item)
        # A run lost before (whose message has not come back yet) is closed
        # first, as the memory store's sweeper would have closed it.
        base, output, closing = await self._lost_run_closing(item, False, None)
        events = [closing] if closing is not None else []
        events.append(rules.cancel_event(base + len(events) + 1, reason))
        puts: list[Any] = [
            {
                "Put": {
                    "TableName": self._events.table,
                    "Item": self._events.item(job_id, e, output),
                }
            }
            for e in events
        ]
        try:
            with aws_errors():
                await self._aws.dynamodb.transact_write_items(
                    TransactItems=[
                        {
                            "Update": {
                                "TableName": self._table,
                                "Key": schema.job_key(job_id),
                                "UpdateExpression": (
                                    "SET #state = :cancelled, cancel_requested = :true,"
                                    " cancel_reason = :reason, updated_at = :now,"
                                    " finished_at = :now"
                                ),
                                # No delivery since the read, and none taken up
                                # that is still live.
                                "ConditionExpression": (
                                    "attempt = :attempt"
                                    " AND NOT #state IN (:final0, :final1, :final2)"
                                    " AND (attribute_not_exists(taken_up) OR taken_up <> :attempt"
                                    " OR #state <> :running OR visible_until <= :now)"
                                    " AND attribute_not_exists(cancel_requested)"
                                ),
                                "ExpressionAttributeNames": {"#state": "state"},
                                "ExpressionAttributeValues": {
                                    ":cancelled": {"N": str(int(JobState.CANCELLED))},
                                    ":true": {"BOOL": True},
                                    ":reason": {"S": reason},
                                    ":now": {"N": str(now_ms)},
                                    ":attempt": {"N": str(schema.attempt_of(item))},
                                    ":running": {"N": str(int(JobState.RUNNING))},
                                    ":final0": _FINAL_VALUES[0],
                                    ":final1": _FINAL_VALUES[1],
                                    ":final2": _FINAL_VALUES[2],
                                },
                            }
                        },
                        *puts,
                    ]
                )
        except TransactionCancelled:
            return False
        log.info("job %s cancelled (%s)", job_id, reason or "no reason given")
        self._ended(item, JobState.CANCELLED)
        if schema.is_live(item, now_ms) and schema.receipt_of(item):
            try:
                await self._delete(self._urls[schema.queue_of(item)], schema.receipt_of(item))
            except (Unavailable, ResourceExhausted) as e:
                log.warning("could not delete the message of job %s: %s", job_id, e)
        return True

    # Reads.

    async def list(
        self, queue: str, state: JobState, page: int, page_size: int, owner: str = ""
    ) -> JobPage:
        page, page_size = rules.page_args(state, page, page_size)
        if queue:
            rules.check_queue(queue, self._urls)
        now_ms = schema.now_ms()
        jobs = [schema.job_from_item(item, now_ms) async for item in self._job_items(queue)]
        jobs.sort(key=lambda job: (schema.ms(job.created_at), job.job_id), reverse=True)
        if state != JobState.UNSPECIFIED:
            jobs = [job for job in jobs if job.state == state]
        if owner:
            # Read like the state: every job of the queue is read already.
            jobs = [job for job in jobs if job.job_params and job.job_params.owner == owner]
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
