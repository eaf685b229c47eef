"""The SQS store's actors: calls coalesced, failures answered, news from other replicas."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from airunner.actors import AwsCallFailed, EventWriter, TailPace, VisibilityExtender
from airunner.api.job.v1.job_pb import JobEvent, JobState
from airunner.aws import AwsClients
from airunner.store import EventQuery
from airunner.store.sqs import EVENTS_KEY
from tests.conftest import open_sqs_store, running_sqs_store
from tests.helpers import end_event, output_event, params, request_id, result, start_event

pytestmark = pytest.mark.aws

SECRET = b"sqs-actor-tests"


class _Gate:
    """A botocore hook that counts entries per call and holds the first call until opened."""

    def __init__(self, count: Callable[[dict[str, Any]], int]) -> None:
        self._count = count
        self.calls: list[int] = []
        self.entered = trio.Event()
        self.opened = trio.Event()

    async def __call__(self, params: dict[str, Any], **_: Any) -> None:
        self.calls.append(self._count(params))
        if len(self.calls) == 1:
            self.entered.set()
            await self.opened.wait()


def _event_item(job_id: str, sequence: int, payload: bytes = b"x") -> dict[str, Any]:
    return {
        "job_id": {"S": job_id},
        "sequence": {"N": str(sequence)},
        "timestamp": {"N": "0"},
        "event_type": {"N": "1"},
        "event_payload": {"B": payload},
    }


async def _stored(aws: AwsClients, table: str) -> dict[tuple[str, int], bytes]:
    pages = aws.dynamodb.get_paginator("scan").paginate(TableName=table, ConsistentRead=True)
    return {
        (item["job_id"]["S"], int(item["sequence"]["N"])): bytes(item["event_payload"]["B"])
        async for page in pages
        for item in page.get("Items", [])
    }


@asynccontextmanager
async def _running(actor: Any) -> AsyncIterator[None]:
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        yield
        nursery.cancel_scope.cancel()


async def test_event_writer_puts_waiting_publishers_of_many_jobs_in_full_batches(
    aws_env: dict[str, str],
) -> None:
    async with open_sqs_store(token_secret=SECRET) as (_, aws, resources):
        writer = EventWriter(aws.dynamodb, resources.events_table, key_attributes=EVENTS_KEY)
        gate = _Gate(lambda p: sum(len(items) for items in p["RequestItems"].values()))
        aws.dynamodb.meta.events.register("provide-client-params.dynamodb.BatchWriteItem", gate)
        async with _running(writer), trio.open_nursery() as publishers:
            publishers.start_soon(writer.write, [_event_item("job-0", 1), _event_item("job-0", 2)])
            await gate.entered.wait()
            # Twenty jobs publish while the first call is in flight.
            for job in range(1, 21):
                items = [_event_item(f"job-{job}", 1), _event_item(f"job-{job}", 2)]
                publishers.start_soon(writer.write, items)
            await trio.testing.wait_all_tasks_blocked()
            gate.opened.set()
        # The second round's two calls run at once, in either order.
        assert gate.calls[0] == 2
        assert sorted(gate.calls[1:]) == [15, 25]
        assert len(await _stored(aws, resources.events_table)) == 42


async def test_event_writer_keeps_the_later_of_two_puts_of_one_event(
    aws_env: dict[str, str],
) -> None:
    async with open_sqs_store(token_secret=SECRET) as (_, aws, resources):
        writer = EventWriter(aws.dynamodb, resources.events_table, key_attributes=EVENTS_KEY)
        gate = _Gate(lambda p: sum(len(items) for items in p["RequestItems"].values()))
        aws.dynamodb.meta.events.register("provide-client-params.dynamodb.BatchWriteItem", gate)
        async with _running(writer), trio.open_nursery() as publishers:
            publishers.start_soon(writer.write, [_event_item("job-a", 1)])
            await gate.entered.wait()
            publishers.start_soon(writer.write, [_event_item("job-b", 1, b"first")])
            await trio.testing.wait_all_tasks_blocked()
            publishers.start_soon(writer.write, [_event_item("job-b", 1, b"second")])
            await trio.testing.wait_all_tasks_blocked()
            gate.opened.set()
        # One call cannot hold two puts of one key: DynamoDB would refuse it.
        assert gate.calls == [1, 1]
        assert (await _stored(aws, resources.events_table))[("job-b", 1)] == b"second"


async def test_event_writer_answers_each_publisher_of_a_failed_call_and_goes_on(
    aws_env: dict[str, str],
) -> None:
    async with open_sqs_store(token_secret=SECRET) as (_, aws, _resources):
        writer = EventWriter(aws.dynamodb, "no-such-table", key_attributes=EVENTS_KEY)
        failures: list[str] = []

        async def publish(job_id: str) -> None:
            try:
                await writer.write([_event_item(job_id, 1)])
            except AwsCallFailed as e:
                failures.append(e.code)

        async with _running(writer):
            async with trio.open_nursery() as publishers:
                for job in range(3):
                    publishers.start_soon(publish, f"job-{job}")
            assert failures == ["ResourceNotFoundException"] * 3
            # The writer is still there for the next publisher.
            with pytest.raises(AwsCallFailed):
                await writer.write([_event_item("job-3", 1)])


async def _in_flight(aws: AwsClients, url: str, count: int) -> list[str]:
    """Receipt handles of ``count`` messages sent and received now."""
    for n in range(count):
        await aws.sqs.send_message(QueueUrl=url, MessageBody=f"message {n}")
    receipts: list[str] = []
    while len(receipts) < count:
        response = await aws.sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=600, WaitTimeSeconds=1
        )
        receipts += [m["ReceiptHandle"] for m in response.get("Messages", [])]
    return receipts


async def _visible(aws: AwsClients, url: str) -> list[str]:
    response = await aws.sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0
    )
    return sorted(m["Body"] for m in response.get("Messages", []))


async def test_visibility_extender_batches_ten_changes_per_call_in_order(
    aws_env: dict[str, str],
) -> None:
    async with open_sqs_store(token_secret=SECRET) as (_, aws, resources):
        url = resources.queue_urls["priority"]
        receipts = await _in_flight(aws, url, 12)
        extender = VisibilityExtender(aws.sqs, "priority", url)
        gate = _Gate(lambda p: len(p["Entries"]))
        aws.sqs.meta.events.register(
            "provide-client-params.sqs.ChangeMessageVisibilityBatch", gate
        )
        async with _running(extender), trio.open_nursery() as callers:
            callers.start_soon(extender.change, receipts[0], 600)
            await gate.entered.wait()
            for receipt in receipts[1:]:
                callers.start_soon(extender.change, receipt, 600)
                await trio.testing.wait_all_tasks_blocked()
            # A second change of one message waits for the next call: the later one wins.
            callers.start_soon(extender.change, receipts[1], 0)
            await trio.testing.wait_all_tasks_blocked()
            gate.opened.set()
        assert gate.calls == [1, 10, 2]
        assert await _visible(aws, url) == ["message 1"]


async def test_visibility_extender_refuses_only_the_stale_receipt_of_a_batch(
    aws_env: dict[str, str],
) -> None:
    async with open_sqs_store(token_secret=SECRET) as (_, aws, resources):
        url = resources.queue_urls["priority"]
        (live, gone) = await _in_flight(aws, url, 2)
        await aws.sqs.delete_message(QueueUrl=url, ReceiptHandle=gone)
        extender = VisibilityExtender(aws.sqs, "priority", url)
        outcomes: dict[str, str] = {}

        async def change(name: str, receipt: str) -> None:
            try:
                await extender.change(receipt, 0)
                outcomes[name] = "changed"
            except AwsCallFailed as e:
                outcomes[name] = e.code

        async with _running(extender), trio.open_nursery() as callers:
            callers.start_soon(change, "live", live)
            callers.start_soon(change, "gone", gone)
        assert outcomes == {"live": "changed", "gone": "ReceiptHandleIsInvalid"}
        assert await _visible(aws, url) == ["message 0"]


def _sequence(event: JobEvent | None) -> int | None:
    return event.sequence if event is not None else None


async def test_subscriber_follows_a_job_that_another_replica_runs(
    aws_env: dict[str, str],
) -> None:
    async with (
        open_sqs_store(token_secret=SECRET) as (runner, aws, resources),
        running_sqs_store(
            aws, resources, token_secret=SECRET, tail_pace=TailPace(idle=0.2)
        ) as watcher,
    ):
        job = await runner.enqueue_job(request_id(), "default", params())
        delivery = await runner.dequeue_job("default", 600, deadline=trio.current_time() + 15)
        assert delivery is not None
        with trio.fail_after(20):
            async with watcher.subscribe_events(job.job_id, EventQuery()) as stream:
                await runner.publish_events(delivery.task_token, [start_event(1)])
                assert _sequence(await stream.receive()) == 1
                await runner.publish_events(delivery.task_token, [output_event(2)])
                assert _sequence(await stream.receive()) == 2
                await runner.publish_events(delivery.task_token, [end_event(3)])
                await runner.complete_job(delivery.task_token, result(job.job_id))
                assert _sequence(await stream.receive()) == 3
                # The other replica finished the job: the stream ends.
                assert await stream.receive() is None
        assert (await watcher.get_job(job.job_id)).state == JobState.COMPLETED
