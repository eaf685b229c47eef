"""KeptEvents: a job's unacknowledged events in memory, then in a spool file,
then as gaps that say where output was lost; always in the order sent."""

from __future__ import annotations

from pathlib import Path

from airunner.api.job.v1.job_pb import JobEvent, StreamType
from airunner.worker._publisher import encoded_size
from airunner.worker._spool import KeptEvents
from tests.helpers import end_event, output_event, start_event

ONE = encoded_size(output_event(2, b"x" * 100))


def _kept(tmp_path: Path | None, *, memory: int, spool: int) -> KeptEvents:
    return KeptEvents(memory, tmp_path, spool)


def _add(kept: KeptEvents, events: list[JobEvent]) -> None:
    for event in events:
        kept.keep(event, encoded_size(event))


def _outputs(first: int, last: int) -> list[JobEvent]:
    return [output_event(sequence, b"x" * 100) for sequence in range(first, last + 1)]


def test_events_come_back_in_order_from_memory_then_the_spool(tmp_path: Path) -> None:
    kept = _kept(tmp_path, memory=3 * ONE, spool=100 * ONE)
    sent = [start_event(1), *_outputs(2, 20), end_event(21)]
    _add(kept, sent)
    assert [event for event, _ in kept.events()] == sent
    assert kept.spooled_bytes > 0
    assert kept.newly_lost() == 0
    # The file was unlinked when made: nothing shows in the directory.
    assert list(tmp_path.iterdir()) == []
    kept.close()


def test_past_both_bounds_a_gap_covers_the_lost_events_and_is_counted_once(
    tmp_path: Path,
) -> None:
    kept = _kept(tmp_path, memory=encoded_size(start_event(1)) + 2 * ONE, spool=2 * ONE)
    _add(kept, [start_event(1), *_outputs(2, 10), end_event(11)])
    events = [event for event, _ in kept.events()]
    assert [event.sequence for event in events] == [1, 2, 3, 4, 5, 6, 11]
    marker = events[5].event_data
    assert marker is not None
    assert marker.field == "output_batch"
    assert (marker.value.start_sequence, marker.value.end_sequence) == (6, 10)
    (line,) = marker.value.outputs
    assert line.stream_type == StreamType.STDERR
    assert line.output.startswith(b"[airunner: output lost here (5 events)")
    assert kept.newly_lost() == 5
    assert kept.newly_lost() == 0
    kept.close()


def test_without_spooling_past_memory_is_a_gap_and_critical_events_are_always_kept() -> None:
    kept = _kept(None, memory=ONE, spool=100 * ONE)
    _add(kept, [*_outputs(1, 3), end_event(4)])
    events = [event for event, _ in kept.events()]
    assert [event.sequence for event in events] == [1, 2, 4]
    assert kept.newly_lost() == 2


def test_a_disk_that_refuses_makes_a_gap(tmp_path: Path) -> None:
    kept = _kept(tmp_path / "gone", memory=ONE, spool=100 * ONE)
    _add(kept, _outputs(1, 4))
    assert [event.sequence for event, _ in kept.events()] == [1, 2]
    assert kept.newly_lost() == 3


def test_clearing_forgets_everything_and_the_spool_is_reused(tmp_path: Path) -> None:
    kept = _kept(tmp_path, memory=ONE, spool=3 * ONE)
    _add(kept, _outputs(1, 4))
    kept.clear()
    assert list(kept.events()) == []
    assert kept.spooled_bytes == 0
    _add(kept, _outputs(5, 8))
    assert [event.sequence for event, _ in kept.events()] == [5, 6, 7, 8]
    kept.close()
