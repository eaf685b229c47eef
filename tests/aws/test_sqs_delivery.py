"""Deliveries of the SQS store under faults: receives that are not runs, dead letters,
racing enqueues, extra messages, expired receipts and failing AWS calls."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from airunner.actors import Received
from airunner.api.job.v1.job_pb import EventType, JobState
from airunner.aws import AwsClients
from airunner.store import Delivery, EventQuery, JobStore
from airunner.store.sqs import Resources, SQSJobStore
from tests.conftest import open_sqs_store, running_sqs_store
from tests.helpers import params, request_id, result, start_event

pytestmark = pytest.mark.aws

SECRET = b"sqs-delivery-tests"
# Short, so that deliveries nobody takes up come back at once.
CONFIRM = 1
VISIBILITY = 2


@asynccontextmanager
async def _store(**options: Any) -> AsyncIterator[tuple[SQSJobStore, AwsClients, Resources]]:
    async with open_sqs_store(token_secret=SECRET, confirm_seconds=CONFIRM, **options) as opened:
        yield opened


async def _dequeue(store: JobStore, visibility: int = VISIBILITY, wait: float = 10) -> Delivery:
    delivery = await store.dequeue_job("default", visibility, deadline=trio.current_time() + wait)
    assert delivery is not None
    return delivery


async def _lose_a_run(store: JobStore) -> None:
    delivery = await _dequeue(store)
    await store.publish_events(delivery.task_token, [start_event(1)])
    await trio.sleep(VISIBILITY + 1)


async def _queued(aws: AwsClients, url: str) -> int:
    attributes = await aws.sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )
    return sum(int(value) for value in attributes["Attributes"].values())


async def _errors(store: JobStore, job_id: str) -> list[str]:
    messages = []
    async with store.subscribe_events(job_id, EventQuery()) as stream:
        while (event := await stream.receive()) is not None:
            if event.event_type == EventType.PROCESS_ERROR:
                messages.append(event.event_data.value.error_message)  # type: ignore[union-attr]
    return messages


class _Failure:
    """A botocore ``before-call`` hook that answers the next ``times`` calls with an error."""

    def __init__(self, code: str, times: int = 1) -> None:
        self.code = code
        self.left = times

    def __call__(self, **_: Any) -> Any:
        if self.left <= 0:
            return None
        self.left -= 1
        return (_Status(500), {"Error": {"Code": self.code, "Message": "injected by the test"}})


class _Status:
    def __init__(self, status_code: int) -> None:
        self.status_code = status_code
        self.headers: dict[str, str] = {}


async def test_a_job_that_lost_its_worker_as_often_as_the_queue_allows_fails(
    aws_env: dict[str, str],
) -> None:
    # The queues move a message after 3 receives; a job has 3 runs by default.
    async with _store() as (store, aws, resources):
        job = await store.enqueue_job(request_id(), "default", params())
        for _ in range(3):
            await _lose_a_run(store)
        # The next receive moves its message to the dead-letter queue; the
        # dead-letter reader ends the job.
        assert await store.dequeue_job("default", 60, deadline=trio.current_time() + 3) is None
        with trio.fail_after(30):
            while (await store.get_job(job.job_id)).state != JobState.FAILED:  # noqa: ASYNC110
                await trio.sleep(0.2)
        assert (await _errors(store, job.job_id))[-1].endswith(
            "the job failed: lost its worker 3 times"
        )
        assert len(await _errors(store, job.job_id)) == 3
        assert await _queued(aws, resources.queue_urls["default"]) == 0
        assert await _queued(aws, resources.dead_letter_queue_urls["default"]) == 0


async def test_receives_that_are_not_runs_never_reach_the_dead_letter_queue(
    aws_env: dict[str, str],
) -> None:
    async with _store() as (store, aws, resources):
        job = await store.enqueue_job(request_id(), "default", params())
        for _ in range(3):
            # Released: its dequeuer left before the job reached it.
            await store.release_job((await _dequeue(store)).task_token)
        for _ in range(3):
            # Never taken up: its worker froze.
            await _dequeue(store, visibility=300)
            await trio.sleep(CONFIRM + 1)
        delivery = await _dequeue(store, visibility=300)
        await store.publish_events(delivery.task_token, [start_event(1)])
        await store.complete_job(delivery.task_token, result(job.job_id))
        assert (await store.get_job(job.job_id)).state == JobState.COMPLETED
        assert await _errors(store, job.job_id) == []
        assert await _queued(aws, resources.dead_letter_queue_urls["default"]) == 0


async def test_a_job_allowed_more_runs_than_the_queue_receives_gets_them_all(
    aws_env: dict[str, str],
) -> None:
    async with _store() as (store, aws, resources):
        job = await store.enqueue_job(request_id(), "default", params(max_attempts=5))
        for _ in range(4):
            await _lose_a_run(store)
        delivery = await _dequeue(store, visibility=60)
        await store.publish_events(delivery.task_token, [start_event(1)])
        await store.complete_job(delivery.task_token, result(job.job_id))
        assert (await store.get_job(job.job_id)).state == JobState.COMPLETED
        assert len(await _errors(store, job.job_id)) == 4
        assert await _queued(aws, resources.dead_letter_queue_urls["default"]) == 0


async def test_racing_enqueues_on_two_replicas_make_one_job_delivered_once(
    aws_env: dict[str, str],
) -> None:
    async with (
        _store() as (first, aws, resources),
        running_sqs_store(aws, resources, token_secret=SECRET, confirm_seconds=CONFIRM) as second,
    ):
        rid = request_id()
        ids: list[str] = []

        async def enqueue(store: JobStore) -> None:
            ids.append((await store.enqueue_job(rid, "default", params())).job_id)

        async with trio.open_nursery() as racers:
            for n in range(8):
                racers.start_soon(enqueue, (first, second)[n % 2])
        assert len(set(ids)) == 1
        delivered = []
        with trio.fail_after(60):
            while (
                delivery := await first.dequeue_job(
                    "default", 300, deadline=trio.current_time() + 4
                )
            ) is not None:
                # Taken up, so that it stays delivered.
                await first.publish_events(delivery.task_token, [])
                delivered.append(delivery.job.job_id)
        assert delivered == ids[:1]
        # Every message that named no job (the losers' own) was deleted; the
        # job's one message is in flight.
        assert await _queued(aws, resources.queue_urls["default"]) == 1
        # No write made a partial item: each is a job or a claim.
        items = (await aws.dynamodb.scan(TableName=resources.jobs_table))["Items"]
        assert all("state" in item or "target_job_id" in item for item in items)
        assert sum("state" in item for item in items) == 1


async def test_an_extra_message_for_a_running_job_starts_no_second_run(
    aws_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with _store() as (store, aws, resources):
        job = await store.enqueue_job(request_id(), "default", params())
        running = await _dequeue(store, visibility=60)
        await store.publish_events(running.task_token, [start_event(1)])
        body = {"job_id": job.job_id, "queue": "default", "request_id": "other"}
        url = resources.queue_urls["default"]
        await aws.sqs.send_message(QueueUrl=url, MessageBody=json.dumps(body))
        assert await store.dequeue_job("default", 60, deadline=trio.current_time() + 3) is None
        assert "deleting a stray message" in caplog.text
        await store.complete_job(running.task_token, result(job.job_id))
        assert (await store.get_job(job.job_id)).state == JobState.COMPLETED
        assert await _queued(aws, url) == 0


async def test_a_delivery_whose_receipt_expired_ends_with_no_job_not_an_error(
    aws_env: dict[str, str],
) -> None:
    # A delivery shorter than the confirm window shortens the message's hold
    # first: that is where a receipt can be found expired.
    async with open_sqs_store(token_secret=SECRET, confirm_seconds=3) as (store, aws, _):
        spoiled: list[str] = []

        def spoil(params: dict[str, Any], **_: Any) -> None:
            if not spoiled:
                spoiled.append(params["Entries"][0]["ReceiptHandle"])
                params["Entries"][0]["ReceiptHandle"] = "expired"

        aws.sqs.meta.events.register(
            "provide-client-params.sqs.ChangeMessageVisibilityBatch", spoil
        )
        job = await store.enqueue_job(request_id(), "default", params())
        assert await store.dequeue_job("default", 1, deadline=trio.current_time() + 1) is None
        assert spoiled
        # The message comes back when its hold runs out, and is delivered then.
        delivery = await _dequeue(store, visibility=60, wait=15)
        assert delivery.job.job_id == job.job_id


async def test_a_delivery_cut_short_by_its_bound_ends_with_no_job_not_an_error(
    aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from airunner.store.sqs import _jobs

    monkeypatch.setattr(_jobs, "DELIVERY_SECONDS", 0.3)
    async with _store() as (store, aws, _):
        slowed: list[bool] = []

        async def slow(**_: Any) -> None:
            if not slowed:
                slowed.append(True)
                await trio.sleep(1)

        job = await store.enqueue_job(request_id(), "default", params())
        aws.dynamodb.meta.events.register("before-call.dynamodb.UpdateItem", slow)
        # The first delivery is cut short; its message comes back after its hold.
        delivery = await _dequeue(store, wait=10)
        assert slowed
        assert delivery.job.job_id == job.job_id


async def test_the_poller_rides_out_failed_receives(
    aws_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    async with _store() as (store, aws, _):
        failure = _Failure("InternalError", times=2)
        aws.sqs.meta.events.register("before-call.sqs.ReceiveMessage", failure)
        job = await store.enqueue_job(request_id(), "default", params())
        delivery = await _dequeue(store, wait=15)
        assert delivery.job.job_id == job.job_id
        assert failure.left == 0
        assert "receive failed" in caplog.text
        assert "crashed" not in caplog.text


async def test_a_recycled_copy_received_before_the_job_names_it_is_not_dropped(
    aws_env: dict[str, str],
) -> None:
    async with _store() as (store, aws, resources):
        job = await store.enqueue_job(request_id(), "default", params())
        released = await _dequeue(store)
        url = resources.queue_urls["default"]
        repointing, repoint = trio.Event(), trio.Event()
        read_once = trio.Event()

        async def hold_repoint(params: dict[str, Any], **_: Any) -> None:
            # The recycle's update, which points the job to its fresh copy.
            if "message_id = :new" in params.get("UpdateExpression", ""):
                repointing.set()
                await repoint.wait()

        def after_read(**_: Any) -> None:
            read_once.set()

        item = await store._jobs.get_item(job.job_id)
        assert item is not None
        first_message = item["message_id"]["S"]
        events = aws.dynamodb.meta.events
        events.register("provide-client-params.dynamodb.UpdateItem", hold_repoint)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.release_job, released.task_token)
            await repointing.wait()
            # Another replica's poller receives the fresh copy before the job names it.
            fresh: list[Any] = []
            with trio.fail_after(15):
                while not fresh:
                    got = await aws.sqs.receive_message(
                        QueueUrl=url,
                        WaitTimeSeconds=5,
                        VisibilityTimeout=30,
                        MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
                    )
                    fresh = [m for m in got.get("Messages", []) if m["MessageId"] != first_message]
            seen: list[dict[str, Any] | None] = []

            async def triage() -> None:
                seen.append(await store._jobs._triage(url, "default", Received(fresh[0])))

            events.register("after-call.dynamodb.GetItem", after_read)
            nursery.start_soon(triage)
            # Once it has read the job still naming the old message, the update lands.
            await read_once.wait()
            repoint.set()
        (triaged,) = seen
        assert triaged is not None, "the job's fresh copy was dropped as a stray"
        assert triaged["job_id"]["S"] == job.job_id


async def test_a_refused_visibility_change_does_not_end_a_live_run(
    aws_env: dict[str, str],
) -> None:
    async with _store() as (store, aws, _):
        job = await store.enqueue_job(request_id(), "default", params())
        delivery = await _dequeue(store, visibility=60)
        await store.publish_events(delivery.task_token, [start_event(1)])
        refused: list[bool] = []

        def refuse(params: dict[str, Any], **_: Any) -> None:
            # As SQS answers an extension past 12 hours since the receive.
            if not refused:
                refused.append(True)
                params["Entries"][0]["VisibilityTimeout"] = 43_201

        aws.sqs.meta.events.register(
            "provide-client-params.sqs.ChangeMessageVisibilityBatch", refuse
        )
        await store.update_job("default", delivery.task_token, 60)
        assert refused
        assert (await store.get_job(job.job_id)).state == JobState.RUNNING
        await store.complete_job(delivery.task_token, result(job.job_id))
        assert (await store.get_job(job.job_id)).state == JobState.COMPLETED
