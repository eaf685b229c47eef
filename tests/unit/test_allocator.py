"""Big buffers stay in the heap: a message's buffers no longer fault in fresh pages."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest

from airunner.allocator import keep_buffers_in_heap

# A process that keeps some output per message (as the store does) and makes a
# few short-lived buffers of a MiB for each (as a socket read, an envelope and a
# decompression do), then prints the page faults per message.
MESSAGES = """
import resource, sys
if sys.argv[1] == "tuned":
    from airunner.allocator import keep_buffers_in_heap
    assert keep_buffers_in_heap()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
kept = []
for _ in range(3):
    bytearray(1 << 20)
before = faults()
for _ in range(100):
    kept.append(bytearray(64 << 10))
    buffers = [bytearray(1 << 20) for _ in range(3)]
    del buffers
print((faults() - before) / 100)
"""

glibc = pytest.mark.skipif(
    not hasattr(ctypes.CDLL(None), "gnu_get_libc_version"), reason="glibc's allocator only"
)


def faults_per_message(mode: str) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))}
    done = subprocess.run(
        [sys.executable, "-c", MESSAGES, mode], env=env, capture_output=True, check=True
    )
    return float(done.stdout)


@glibc
def test_short_lived_buffers_reuse_the_heap_instead_of_fresh_pages() -> None:
    # 3 MiB of buffers are 768 pages; what is kept, 16 pages a message.
    assert faults_per_message("default") > 300
    assert faults_per_message("tuned") < 50


def test_an_operator_setting_stands(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert not keep_buffers_in_heap()
