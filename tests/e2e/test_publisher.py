"""EventPublisher against a real server that goes away and comes back."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import trio

from airunner.api.job.v1.job_pb import JobEvent, StreamType
from airunner.client import AirunnerClient
from airunner.store import Delivery, EventQuery, MemoryJobStore
from airunner.store.rules import output_bytes
from airunner.worker import EventPublisher
from airunner.worker._publisher import INPUT_BUFFER, PublishFailed, encoded_size
from tests.helpers import (
    end_event,
    eventually,
    output_event,
    params,
    request_id,
    result,
    start_event,
)

from .conftest import run_server

pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _running_job() -> tuple[MemoryJobStore, Delivery, str]:
    """A store with one delivered job, and a free address to serve it on."""
    store = MemoryJobStore(token_secret=b"e2e-secret")
    await store.enqueue_job(request_id(), "default", params())
    delivery = await store.dequeue_job("default", 600, deadline=trio.current_time() + 1)
    assert delivery is not None
    return store, delivery, f"127.0.0.1:{_free_port()}"


async def test_events_survive_a_server_restart_without_loss_or_duplicates() -> None:
    store, delivery, listen = await _running_job()
    record = store._jobs[delivery.job.job_id]
    done = trio.Event()
    async with AirunnerClient(f"http://{listen}") as client, trio.open_nursery() as nursery:
        publisher = EventPublisher(client, delivery.task_token)

        async def publish_all() -> None:
            await publisher.run()
            done.set()

        async with run_server(store=store, listen=listen, grace_period=0.2):
            nursery.start_soon(publish_all)
            await publisher.publish(start_event(1))
            await publisher.publish(output_event(2))
            await eventually(lambda: len(record.events) == 2)
        # The server is gone: the stream breaks, and these wait for the next one.
        await publisher.publish(output_event(3))
        async with run_server(store=store, listen=listen):
            await publisher.publish(end_event(4))
            publisher.end()
            with trio.fail_after(30):
                await done.wait()
    assert publisher.lost_events == 0
    await store.complete_job(delivery.task_token, result(delivery.job.job_id))
    async with store.subscribe_events(delivery.job.job_id, EventQuery()) as events:
        sequences = []
        while (event := await events.receive()) is not None:
            sequences.append(event.sequence)
    assert sequences == [1, 2, 3, 4]


async def test_output_past_the_retention_limit_is_counted_when_lost() -> None:
    store, delivery, listen = await _running_job()
    record = store._jobs[delivery.job.job_id]
    done = trio.Event()
    async with AirunnerClient(f"http://{listen}") as client, trio.open_nursery() as nursery:
        # Room to keep the start event and one output event for re-sending.
        room = encoded_size(start_event(1)) + encoded_size(output_event(2, b"x" * 100))
        publisher = EventPublisher(client, delivery.task_token, retain_bytes=room)

        async def publish_all() -> None:
            await publisher.run()
            done.set()

        async with run_server(store=store, listen=listen, grace_period=0.2):
            nursery.start_soon(publish_all)
            await publisher.publish(start_event(1))
            for sequence in range(2, 6):
                await publisher.publish(output_event(sequence, b"x" * 100))
            await eventually(lambda: len(record.events) == 5)
        # The server lost nothing here, but the stream broke before its answer:
        # the publisher re-sends what it kept and counts what it could not keep.
        async with run_server(store=store, listen=listen):
            await publisher.publish(end_event(6))
            publisher.end()
            with trio.fail_after(30):
                await done.wait()
    assert publisher.lost_events == 3
    assert sorted(record.events) == [1, 2, 3, 4, 5, 6]


async def test_output_goes_on_while_no_server_answers_and_is_sent_when_one_does() -> None:
    """More events than the input buffer holds, all published while the server is
    gone: the producer never waits for it, and the events are stored in order."""
    store, delivery, listen = await _running_job()
    record = store._jobs[delivery.job.job_id]
    done = trio.Event()
    async with AirunnerClient(f"http://{listen}") as client, trio.open_nursery() as nursery:
        publisher = EventPublisher(
            client, delivery.task_token, held_until=lambda: trio.current_time() + 600
        )

        async def publish_all() -> None:
            await publisher.run()
            done.set()

        async with run_server(store=store, listen=listen, grace_period=0.2):
            nursery.start_soon(publish_all)
            await publisher.publish(start_event(1))
            await eventually(lambda: len(record.events) == 1)
        last = 2 + 4 * INPUT_BUFFER
        with trio.fail_after(10):
            for sequence in range(2, last):
                await publisher.publish(output_event(sequence))
            await publisher.publish(end_event(last))
        publisher.end()
        assert not done.is_set()
        async with run_server(store=store, listen=listen):
            with trio.fail_after(30):
                await done.wait()
    assert publisher.lost_events == 0
    assert sorted(record.events) == list(range(1, last + 1))


async def test_publishing_gives_up_when_no_server_answers_before_the_delivery_expires() -> None:
    _, delivery, listen = await _running_job()
    expires = trio.current_time() + 2
    async with AirunnerClient(f"http://{listen}") as client:
        publisher = EventPublisher(client, delivery.task_token, held_until=lambda: expires)
        await publisher.publish(start_event(1))
        publisher.end()
        with (
            trio.fail_after(30),
            pytest.raises(PublishFailed, match="before the delivery expired"),
        ):
            await publisher.run()
    # Tried until the delivery expired, not for a fixed number of attempts.
    assert trio.current_time() >= expires


async def _publish_while_the_server_is_gone(
    tmp_path: Path, *, retain_bytes: int, spool_bytes: int, outputs: int
) -> tuple[EventPublisher, list[JobEvent]]:
    """Start event stored, then ``outputs`` output events and the end published
    while no server answers; then a server comes: the publisher's count and the
    job's stored log."""
    store, delivery, listen = await _running_job()
    record = store._jobs[delivery.job.job_id]
    done = trio.Event()
    async with AirunnerClient(f"http://{listen}") as client, trio.open_nursery() as nursery:
        publisher = EventPublisher(
            client,
            delivery.task_token,
            retain_bytes=retain_bytes,
            spool_dir=tmp_path,
            spool_bytes=spool_bytes,
            held_until=lambda: trio.current_time() + 600,
        )

        async def publish_all() -> None:
            await publisher.run()
            done.set()

        async with run_server(store=store, listen=listen, grace_period=0.2):
            nursery.start_soon(publish_all)
            await publisher.publish(start_event(1))
            await eventually(lambda: len(record.events) == 1)
        with trio.fail_after(10):
            for sequence in range(2, outputs + 2):
                await publisher.publish(output_event(sequence, b"x" * 200))
            await publisher.publish(end_event(outputs + 2))
        publisher.end()
        async with run_server(store=store, listen=listen):
            with trio.fail_after(30):
                await done.wait()
    return publisher, [record.events[sequence] for sequence in record.sequences]


async def test_output_past_memory_waits_in_a_spool_file_while_no_server_answers(
    tmp_path: Path,
) -> None:
    room = encoded_size(start_event(1)) + 10 * encoded_size(output_event(2, b"x" * 200))
    publisher, stored = await _publish_while_the_server_is_gone(
        tmp_path, retain_bytes=room, spool_bytes=10 * 1024 * 1024, outputs=200
    )
    assert publisher.lost_events == 0
    assert [event.sequence for event in stored] == list(range(1, 203))
    assert [output_bytes(event) > 0 for event in stored[1:-1]] == [True] * 200
    # The spool file was never visible, and nothing of it is left.
    assert not any(tmp_path.iterdir())  # noqa: ASYNC240


async def test_output_past_memory_and_spool_leaves_a_mark_where_it_was_lost(
    tmp_path: Path,
) -> None:
    one = encoded_size(output_event(2, b"x" * 200))
    publisher, stored = await _publish_while_the_server_is_gone(
        tmp_path,
        retain_bytes=encoded_size(start_event(1)) + 5 * one,
        spool_bytes=5 * one,
        outputs=30,
    )
    # Five outputs in memory, five in the spool, twenty lost: one line marks them.
    assert publisher.lost_events == 20
    assert [event.sequence for event in stored] == [*range(1, 13), 32]
    marker = stored[11].event_data
    assert marker is not None
    assert marker.field == "output_batch"
    assert (marker.value.start_sequence, marker.value.end_sequence) == (12, 31)
    (line,) = marker.value.outputs
    assert line.output.startswith(b"[airunner: output lost here (20 events)")
    assert line.stream_type == StreamType.STDERR
