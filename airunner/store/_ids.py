"""Job ids: UUIDv7, so that ids sort by creation time (RFC 9562, section 5.7)."""

from __future__ import annotations

import os
import time
import uuid

_last_ms = 0
_last_counter = 0
# 12 bits of rand_a hold a counter within one millisecond, so ids made in the
# same millisecond by this process still sort in creation order.
_COUNTER_MAX = 0xFFF


def new_job_id() -> str:
    """Return a new UUIDv7 string, greater than any earlier one from this process."""
    global _last_ms, _last_counter
    ms = time.time_ns() // 1_000_000
    if ms > _last_ms:
        _last_ms = ms
        _last_counter = int.from_bytes(os.urandom(2)) & 0x7FF
    elif _last_counter < _COUNTER_MAX:
        _last_counter += 1
    else:
        # The counter ran out within one millisecond: borrow the next one.
        _last_ms += 1
        _last_counter = 0
    rand_b = int.from_bytes(os.urandom(8)) & ((1 << 62) - 1)
    value = (_last_ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= _last_counter << 64
    value |= 0b10 << 62
    value |= rand_b
    return str(uuid.UUID(int=value))
