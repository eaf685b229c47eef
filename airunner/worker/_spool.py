"""Kept: a job's events sent since the server last acknowledged them, for re-sending.

The server says it stored a stream's events only when the stream ends, so a
publisher keeps everything it sent since, in order, and sends it all again on
a new stream if this one breaks. Most of it stays in memory, up to a bound;
what comes past that bound goes to a spool file on disk, up to a bound of its
own, so that a job whose server is out of reach runs on for a while with its
output safe. Past both, an event is not kept: a *gap* takes its place,
and if it must be sent again, the gap goes instead, as one line of output that
says output was lost there, covering the lost events' sequences. Process start,
end and error events are always kept in memory.

The spool file is made in the worker's work directory, not the job's
workspace (a job running as another user could rewrite it), and unlinked at
once: nothing of it outlives the worker.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from protobuf import Oneof

from airunner.api.job.v1.job_pb import (
    EventType,
    JobEvent,
    OutputBatchEvent,
    OutputItem,
    StreamType,
)
from airunner.store import last_sequence_of

CRITICAL_TYPES = frozenset(
    {EventType.PROCESS_START, EventType.PROCESS_END, EventType.PROCESS_ERROR}
)


@dataclass
class _Gap:
    """Events not kept, one after the other: their sequences and how many."""

    event: JobEvent
    end: int
    count: int = 1
    # Whether a re-send has already counted these events as lost.
    counted: bool = False

    def marker(self) -> JobEvent:
        """What is sent in their place: a line of output covering their sequences."""
        noun = "event" if self.count == 1 else "events"
        line = (
            f"[airunner: output lost here ({self.count} {noun}): the connection to the "
            "server broke and the worker had no room left to keep it]\n"
        ).encode()
        batch = OutputBatchEvent(
            outputs=[OutputItem(output=line, stream_type=StreamType.STDERR)],
            start_sequence=self.event.sequence,
            end_sequence=self.end,
        )
        return JobEvent(
            sequence=self.event.sequence,
            timestamp=self.event.timestamp,
            event_type=EventType.OUTPUT_BATCH,
            event_data=Oneof[Literal["output_batch"], OutputBatchEvent](
                field="output_batch", value=batch
            ),
        )


@dataclass
class _OnDisk:
    offset: int
    length: int
    size: int


class KeptEvents:
    """Events kept for re-sending, in the order they were sent.

    Args:
        memory_bytes: Bytes of events kept in memory (critical events always are).
        spool_dir: Where the spool file may be made; None for no spool.
        spool_bytes: Bytes of events the spool file may hold.
    """

    def __init__(self, memory_bytes: int, spool_dir: Path | None, spool_bytes: int) -> None:
        self._memory_limit = memory_bytes
        self._spool_dir = spool_dir
        self._spool_limit = spool_bytes if spool_dir is not None else 0
        self._entries: list[tuple[JobEvent, int] | _OnDisk | _Gap] = []
        self._memory_bytes = 0
        self._fd: int | None = None
        # The file's length, and the kept events' sizes in it (what the bound counts).
        self._spooled = 0
        self._spool_used = 0

    def keep(self, event: JobEvent, size: int) -> None:
        """Keep ``event`` (``size``: about its encoded size): in memory if there
        is room, else in the spool if there is room, else as a gap."""
        if event.event_type in CRITICAL_TYPES or self._memory_bytes + size <= self._memory_limit:
            self._entries.append((event, size))
            self._memory_bytes += size
        elif self._spool_used + size <= self._spool_limit and self._spill(event, size):
            pass
        else:
            last = self._entries[-1] if self._entries else None
            if isinstance(last, _Gap):
                last.end = max(last.end, last_sequence_of(event))
                last.count += 1
            else:
                self._entries.append(_Gap(event, last_sequence_of(event)))

    def events(self) -> Iterator[tuple[JobEvent, int]]:
        """What to send again, in order, each with its size; gaps as their markers."""
        for entry in self._entries:
            if isinstance(entry, _Gap):
                marker = entry.marker()
                yield marker, len(marker.to_binary())
            elif isinstance(entry, _OnDisk):
                assert self._fd is not None
                data = os.pread(self._fd, entry.length, entry.offset)
                yield JobEvent.from_binary(data), entry.size
            else:
                yield entry

    def newly_lost(self) -> int:
        """Events in gaps not counted before; counted now (a re-send sends the gaps)."""
        lost = 0
        for entry in self._entries:
            if isinstance(entry, _Gap) and not entry.counted:
                entry.counted = True
                lost += entry.count
        return lost

    def clear(self) -> None:
        """The server acknowledged everything kept."""
        self._entries.clear()
        self._memory_bytes = 0
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
        self._spooled = self._spool_used = 0

    def close(self) -> None:
        self.clear()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def spooled_bytes(self) -> int:
        """Bytes in the spool file."""
        return self._spooled

    def _spill(self, event: JobEvent, size: int) -> bool:
        """Write ``event`` to the spool file and keep where; False if the disk refused."""
        data = event.to_binary()
        try:
            if self._fd is None:
                assert self._spool_dir is not None
                fd, path = tempfile.mkstemp(
                    prefix=".events-", suffix=".spool", dir=self._spool_dir
                )
                os.unlink(path)
                self._fd = fd
            written = os.pwrite(self._fd, data, self._spooled)
        except OSError:
            # A full or missing disk: the event becomes part of a gap.
            return False
        if written != len(data):
            return False
        self._entries.append(_OnDisk(self._spooled, len(data), size))
        self._spooled += len(data)
        self._spool_used += size
        return True
