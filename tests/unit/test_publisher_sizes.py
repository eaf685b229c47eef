"""The sizes EventPublisher counts (retention, message size) without encoding output."""

from __future__ import annotations

from typing import Literal

import pytest
from protobuf import Oneof
from protobuf.wkt import Duration, Timestamp

from airunner.api.job.v1.job_pb import (
    EventType,
    JobEvent,
    OutputBatchEvent,
    OutputItem,
    ProcessEndEvent,
    StreamType,
)
from airunner.worker._publisher import encoded_size

LARGEST = 2**63 - 1


def batch(outputs: list[OutputItem], *, sequence: int = 1, stamp: int = 0) -> JobEvent:
    return JobEvent(
        sequence=sequence,
        timestamp=Timestamp(seconds=stamp, nanos=999_999_999 if stamp else 0),
        event_type=EventType.OUTPUT_BATCH,
        event_data=Oneof[Literal["output_batch"], OutputBatchEvent](
            field="output_batch",
            value=OutputBatchEvent(
                outputs=outputs,
                start_sequence=sequence,
                end_sequence=sequence + len(outputs) - 1,
                first_timestamp_ms=stamp * 1000,
                playback_interval_millis=-1 if stamp else 0,
            ),
        ),
    )


@pytest.mark.parametrize(
    "event",
    [
        batch([OutputItem(output=b"x")]),
        batch([OutputItem(output=b"")] * 1000),
        batch([OutputItem(output=bytes(200 * 1024))]),
        batch(
            [
                OutputItem(
                    output=bytes(size),
                    stream_type=StreamType.STDERR,
                    timestamp_delta_ms=-(2**31),
                )
                for size in (0, 127, 128, 16383, 16384, 200 * 1024)
            ],
            sequence=LARGEST - 10,
            stamp=253402300799,
        ),
    ],
)
def test_an_output_batch_is_measured_at_no_less_than_its_encoding(event: JobEvent) -> None:
    encoded = len(event.to_binary())
    outputs = event.event_data.value.outputs  # type: ignore[union-attr]
    assert encoded <= encoded_size(event) <= encoded + 200 + 40 * len(outputs)


def test_other_events_are_measured_encoded() -> None:
    event = JobEvent(
        sequence=7,
        event_type=EventType.PROCESS_END,
        event_data=Oneof[Literal["process_end"], ProcessEndEvent](
            field="process_end",
            value=ProcessEndEvent(exit_code=3, run_duration=Duration(seconds=2)),
        ),
    )
    assert encoded_size(event) == len(event.to_binary())
