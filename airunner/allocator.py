"""Big buffers stay in the heap: glibc's allocator set for streaming output.

Output crosses each process as messages of up to a few MiB, and each message
is a handful of buffers of that size that live for microseconds: the bytes a
socket read, the envelope, the decompressed message, the decoded fields.
glibc's malloc gives each block over its mmap threshold pages of its own and
unmaps them when freed, and gives the top of the heap back to the kernel
whenever more than its trim threshold is free there. Either way the next
message's buffers are fresh pages that the kernel must fault in and zero: in a
server streaming output that was the largest single cost, spread over every
line that first touches a new buffer.

``keep_buffers_in_heap`` raises both thresholds once, at start-up: blocks up to
``MMAP_THRESHOLD`` come from the heap, and up to ``TRIM_THRESHOLD`` of freed
heap is kept for the next ones. A process therefore holds on to that much
memory it used once. Other allocators (musl, macOS) are left as they are, and
so is glibc when the operator set its thresholds in the environment.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

# glibc's upper bound for the threshold it adapts by itself, on 64-bit.
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 128 * 1024 * 1024
# mallopt's parameter numbers (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Settings through which an operator has already chosen (glibc reads them at start).
_OPERATOR_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def keep_buffers_in_heap() -> bool:
    """Set glibc's mmap and trim thresholds for this process; whether they were set."""
    if any(name in os.environ for name in _OPERATOR_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 -- glibc only: musl's mallopt does nothing
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done: bool = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    done = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and done
    if not done:
        log.warning("could not set the allocator's thresholds; output streams cost more")
    return done
