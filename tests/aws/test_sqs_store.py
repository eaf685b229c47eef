"""What only the SQS/DynamoDB store has: messages, receipts, dead letters, batch limits."""

from __future__ import annotations

import json
import logging
from collections import Counter
from typing import Any

import pytest
import trio
import trio.testing

from airunner.actors import TailPace
from airunner.api.job.v1.job_pb import JobState
from airunner.store import EventQuery, InvalidArgument, TaskTokenSigner
from airunner.store.rules import output_bytes
from tests.conftest import open_sqs_store, running_sqs_store
from tests.contract.test_events import drain
from tests.contract.test_output_cap import batch, truncations
from tests.helpers import (
    end_event,
    eventually,
    output_event,
    params,
    request_id,
    result,
    start_event,
)

pytestmark = pytest.mark.aws

SECRET = b"sqs-store-tests"


async def _receive_all(aws: Any, url: str) -> list[dict[str, Any]]:
    response = await aws.sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0
    )
    return list(response.get("Messages", []))


async def test_poison_messages_are_deleted_and_never_stop_the_poller(
    aws_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with open_sqs_store(token_secret=SECRET) as (store, aws, resources):
        url = resources.queue_urls["default"]
        for body in (
            "not json",
            json.dumps({"job_id": "01900000-0000-7000-8000-000000000000"}),
            "[]",
        ):
            await aws.sqs.send_message(QueueUrl=url, MessageBody=body)
        job = await store.enqueue_job(request_id(), "default", params())
        delivery = await store.dequeue_job("default", 60, deadline=trio.current_time() + 15)
        assert delivery is not None
        assert delivery.job.job_id == job.job_id
        # Nothing is left: the poison messages were deleted, the job's message is in flight.
        assert await _receive_all(aws, url) == []
    assert caplog.text.count("deleting a poison message") == 2
    # A job that does not exist: a stray (an enqueue that died before writing it).
    assert caplog.text.count("deleting a stray message") == 1


async def test_message_of_a_finished_job_is_dropped(aws_env: dict[str, str]) -> None:
    async with open_sqs_store(token_secret=SECRET) as (store, aws, resources):
        url = resources.queue_urls["default"]
        job = await store.enqueue_job(request_id(), "default", params())
        delivery = await store.dequeue_job("default", 60, deadline=trio.current_time() + 15)
        assert delivery is not None
        await store.complete_job(delivery.task_token, result(job.job_id))
        # A duplicate of its message, as SQS may deliver one.
        body = {"job_id": job.job_id, "queue": "default", "attempt": 0}
        await aws.sqs.send_message(QueueUrl=url, MessageBody=json.dumps(body))
        assert await store.dequeue_job("default", 60, deadline=trio.current_time() + 3) is None
        assert await _receive_all(aws, url) == []
        assert (await store.get_job(job.job_id)).state == JobState.COMPLETED


async def test_running_job_whose_message_reappears_is_delivered_again(
    aws_env: dict[str, str],
) -> None:
    async with open_sqs_store(token_secret=SECRET) as (store, aws, resources):
        url = resources.queue_urls["default"]
        job = await store.enqueue_job(request_id(), "default", params())
        first = await store.dequeue_job("default", 600, deadline=trio.current_time() + 15)
        assert first is not None
        receipt = TaskTokenSigner(SECRET).verify(first.task_token).receipt_handle
        # SQS shows the message again (a lost ChangeMessageVisibility, say).
        await aws.sqs.change_message_visibility(
            QueueUrl=url, ReceiptHandle=receipt, VisibilityTimeout=0
        )
        second = await store.dequeue_job("default", 600, deadline=trio.current_time() + 15)
        assert second is not None
        assert second.job.job_id == job.job_id
        assert TaskTokenSigner(SECRET).verify(second.task_token).attempt == 2
        with pytest.raises(InvalidArgument, match="no longer current"):
            await store.complete_job(first.task_token, result(job.job_id))
        await store.complete_job(second.task_token, result(job.job_id))


async def test_a_message_received_too_often_reaches_the_dead_letter_reader(
    aws_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with open_sqs_store(token_secret=SECRET) as (_, aws, resources):
        url = resources.queue_urls["default"]
        await aws.sqs.send_message(QueueUrl=url, MessageBody="a message nobody deletes")
        for _ in range(3):
            got = await aws.sqs.receive_message(
                QueueUrl=url, VisibilityTimeout=0, WaitTimeSeconds=1
            )
            assert len(got.get("Messages", [])) == 1
        # The fourth receive moves it to the dead-letter queue, whose reader deletes it.
        assert await _receive_all(aws, url) == []
        await eventually(lambda: "deleting a poison message from dead letters" in caplog.text)
        dead_letters = resources.dead_letter_queue_urls["default"]
        attributes = await aws.sqs.get_queue_attributes(
            QueueUrl=dead_letters, AttributeNames=["ApproximateNumberOfMessages"]
        )
        assert attributes["Attributes"]["ApproximateNumberOfMessages"] == "0"


async def test_a_queue_of_its_own_has_its_poller_and_dead_letter_reader(
    aws_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    queues = ("default", "nightly")
    async with open_sqs_store(token_secret=SECRET, queues=queues) as (store, aws, resources):
        names = {actor.name for actor in store.actors()}
        for queue in queues:
            assert {f"queue poller ({queue})", f"dead-letter reader ({queue})"} <= names
        # The start-up check found the dead-letter queue of the queue's redrive policy.
        dead_letters = resources.dead_letter_queue_urls["nightly"]
        await aws.sqs.send_message(QueueUrl=dead_letters, MessageBody="not a job")
        await eventually(lambda: "deleting a poison message from dead letters" in caplog.text)


async def test_a_message_goes_to_the_waiter_whose_first_queue_it_is(
    aws_env: dict[str, str],
) -> None:
    async with open_sqs_store(token_secret=SECRET) as (store, _, _):
        taken: dict[str, str] = {}

        async def wait(name: str, queues: list[str]) -> None:
            delivery = await store.dequeue_job(queues, 60, deadline=trio.current_time() + 15)
            assert delivery is not None
            taken[name] = delivery.job.job_id

        async with trio.open_nursery() as nursery:
            # The one waiting longer has default only as its fallback.
            nursery.start_soon(wait, "both", ["priority", "default"])
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(wait, "default only", ["default"])
            await trio.testing.wait_all_tasks_blocked()
            low = await store.enqueue_job(request_id(), "default", params())
            await eventually(lambda: bool(taken))
            assert taken == {"default only": low.job_id}
            high = await store.enqueue_job(request_id(), "priority", params())
        assert taken == {"default only": low.job_id, "both": high.job_id}


async def test_events_are_written_25_items_per_batch_at_most(aws_env: dict[str, str]) -> None:
    async with open_sqs_store(token_secret=SECRET) as (store, aws, _):
        calls: list[int] = []

        def count(params: dict[str, Any], **_: Any) -> None:
            calls.append(sum(len(items) for items in params["RequestItems"].values()))

        aws.dynamodb.meta.events.register("provide-client-params.dynamodb.BatchWriteItem", count)
        await store.enqueue_job(request_id(), "default", params())
        delivery = await store.dequeue_job("default", 600, deadline=trio.current_time() + 15)
        assert delivery is not None
        events = [start_event(1)] + [output_event(n) for n in range(2, 61)]
        await store.publish_events(delivery.task_token, events)
        # moto would take 60 items in one call; DynamoDB takes 25. The calls run
        # at once, so they end in any order.
        assert sorted(calls) == [10, 25, 25]


async def test_output_cap_holds_when_a_delivery_publishes_through_two_replicas(
    aws_env: dict[str, str],
) -> None:
    limit = 1000
    async with (
        open_sqs_store(token_secret=SECRET, max_output_bytes=limit) as (first, aws, resources),
        running_sqs_store(aws, resources, token_secret=SECRET, max_output_bytes=limit) as second,
    ):
        job = await first.enqueue_job(request_id(), "default", params())
        delivery = await first.dequeue_job("default", 600, deadline=trio.current_time() + 15)
        assert delivery is not None
        token = delivery.task_token
        await first.publish_events(token, [])
        await first.publish_events(token, [start_event(1), batch(2, 600)])
        # The stream moves to the other replica, which learns the count from the
        # last event item, and cuts the output there.
        await second.publish_events(token, [batch(3, 300, 300)])
        # Back on the first replica, whose count is stale: the jump in sequences
        # tells it to learn the count again, and the output stays cut.
        await first.publish_events(token, [batch(5, 150)])
        # A worker that sends everything again, on either replica, changes nothing.
        every = [start_event(1), batch(2, 600), batch(3, 300, 300), batch(5, 150), batch(6, 130)]
        await second.publish_events(token, every)
        await first.publish_events(token, every)
        await first.publish_events(token, [end_event(7)])
        await first.complete_job(token, result(job.job_id))
        async with second.subscribe_events(job.job_id, EventQuery()) as stream:
            events = await drain(stream)
    assert [event.sequence for event in events] == [1, 2, 3, 4, 7]
    assert truncations(events) == [(4, limit, 900)]
    assert sum(output_bytes(event) for event in events) == 900


async def test_a_cancelled_jobs_message_is_deleted_when_received(
    aws_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with open_sqs_store(token_secret=SECRET) as (store, aws, resources):
        url = resources.queue_urls["default"]
        job = await store.enqueue_job(request_id(), "default", params())
        await store.cancel_job(job.job_id, "not needed")
        assert await store.dequeue_job("default", 60, deadline=trio.current_time() + 3) is None
        assert "deleting a finished message" in caplog.text
        assert await _receive_all(aws, url) == []
        stored = await store.get_job(job.job_id)
        assert (stored.state, stored.attempt) == (JobState.CANCELLED, 0)


async def test_a_completion_that_read_the_job_before_its_cancel_ends_it_cancelled(
    aws_env: dict[str, str],
) -> None:
    """CompleteJob reads the job, then writes its result; a cancel requested in
    between (and answered RUNNING + cancel_requested) must still win."""
    async with open_sqs_store(token_secret=SECRET) as (store, _, _):
        job = await store.enqueue_job(request_id(), "default", params())
        delivery = await store.dequeue_job("default", 60, deadline=trio.current_time() + 15)
        assert delivery is not None
        await store.publish_events(delivery.task_token, [start_event(1)])
        marked = await store.cancel_job(job.job_id, "raced")
        assert (marked.state, marked.cancel_requested) == (JobState.RUNNING, True)
        # The write of a completion that read the job before the cancel.
        token = TaskTokenSigner(SECRET).verify(delivery.task_token)
        jobs = store._jobs
        with pytest.raises(InvalidArgument, match="no longer current"):
            await jobs._record_result(token, result(job.job_id), cancelled=False)
        await store.complete_job(delivery.task_token, result(job.job_id))
        stored = await store.get_job(job.job_id)
        assert (stored.state, stored.exit_code) == (JobState.CANCELLED, 0)


class _Calls:
    """The AWS calls a store makes, by operation (once per call, whatever its
    retries), leaving out the dead-letter readers' receives."""

    def __init__(self, aws: Any, dead_letter_urls: Any) -> None:
        self.made: Counter[str] = Counter()
        self._dead_letter_urls = set(dead_letter_urls)
        for client in (aws.sqs, aws.dynamodb):
            client.meta.events.register("provide-client-params", self._count)

    def _count(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        if params.get("QueueUrl") not in self._dead_letter_urls:
            self.made[model.name] += 1


async def test_a_job_waiting_for_its_worker_costs_six_aws_calls(
    aws_env: dict[str, str],
) -> None:
    """Enqueue, dequeue and complete: the message and the transaction that
    writes the job, the receive, the write that starts it, the write that ends
    it and the delete; no read."""
    async with open_sqs_store(token_secret=SECRET) as (store, aws, resources):
        calls = _Calls(aws, resources.dead_letter_queue_urls.values())
        job = await store.enqueue_job(request_id(), "default", params())
        delivery = await store.dequeue_job(["default"], 60, deadline=trio.current_time() + 15)
        assert delivery is not None
        await store.complete_job(delivery.task_token, result(job.job_id))
        assert (await store.get_job(job.job_id)).state == JobState.COMPLETED
    del calls.made["GetItem"]  # get_job's
    assert calls.made == {
        "SendMessage": 1,
        "TransactWriteItems": 1,
        "ReceiveMessage": 1,
        "UpdateItem": 2,
        "DeleteMessage": 1,
    }


async def test_a_runs_publishes_and_heartbeats_read_nothing_the_replica_wrote(
    aws_env: dict[str, str],
) -> None:
    """Each publish and heartbeat is checked against the job item its replica
    wrote last (the delivery, the take-up, the heartbeat); a replica that never
    saw the delivery reads it once."""
    async with (
        open_sqs_store(token_secret=SECRET) as (first, aws, resources),
        running_sqs_store(aws, resources, token_secret=SECRET) as second,
    ):
        job = await first.enqueue_job(request_id(), "default", params())
        delivery = await first.dequeue_job(["default"], 60, deadline=trio.current_time() + 15)
        assert delivery is not None
        token = delivery.task_token
        calls = _Calls(aws, resources.dead_letter_queue_urls.values())
        await first.publish_events(token, [])
        await first.publish_events(token, [start_event(1)])
        await first.update_job("default", token, 60)
        await first.publish_events(token, [output_event(2)])
        assert calls.made["GetItem"] == calls.made["Query"] == 0
        await second.publish_events(token, [output_event(3)])
        await second.publish_events(token, [output_event(4)])
        await second.update_job("default", token, 60)
        await second.publish_events(token, [end_event(5)])
        assert calls.made["GetItem"] == 1
        await first.complete_job(token, result(job.job_id))
        async with first.subscribe_events(job.job_id, EventQuery()) as stream:
            events = await drain(stream)
    assert [event.sequence for event in events] == [1, 2, 3, 4, 5]


async def test_subscribers_on_the_publishing_replica_are_served_without_reads(
    aws_env: dict[str, str],
) -> None:
    """What a replica writes reaches its subscribers from memory: no read per
    subscriber, nor per publish; the end of the job is one read for all."""
    # The event tail looks once, when the first subscriber comes.
    quiet = TailPace(fast=600, running=600, idle=600)
    async with open_sqs_store(token_secret=SECRET, tail_pace=quiet) as (store, aws, resources):
        job = await store.enqueue_job(request_id(), "default", params())
        delivery = await store.dequeue_job(["default"], 60, deadline=trio.current_time() + 15)
        assert delivery is not None
        token = delivery.task_token
        await store.publish_events(token, [start_event(1)])
        calls = _Calls(aws, resources.dead_letter_queue_urls.values())
        results: list[list[int]] = []
        caught_up = trio.Semaphore(0)

        async def watch(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            async with store.subscribe_events(job.job_id, EventQuery()) as stream:
                task_status.started()
                first = await stream.receive()
                assert first is not None
                caught_up.release()
                results.append([first.sequence, *(e.sequence for e in await drain(stream))])

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                await nursery.start(watch)
            for _ in range(5):
                await caught_up.acquire()
            calls.made.clear()
            for sequence in range(2, 22):
                await store.publish_events(token, [output_event(sequence)])
                await trio.sleep(0.01)
            assert calls.made["Query"] == calls.made["GetItem"] == 0
            await store.publish_events(token, [end_event(22)])
            await store.complete_job(token, result(job.job_id))
        assert results == [list(range(1, 23))] * 5
        # The end: one GetItem and one Query (nothing more stored) for all five.
        assert (calls.made["GetItem"], calls.made["Query"]) == (1, 1)
