"""Gzip where it pays: what is compressed, and that every message stays gzip."""

from __future__ import annotations

import gzip
import os
import random

import pytest
from connectrpc.errors import ConnectError

from airunner.compression import GZIP, MIN_COMPRESS_BYTES, stored


def random_text(size: int) -> bytes:
    rng = random.Random(14)
    return bytes(rng.choice(b"0123456789abcdef") for _ in range(size))


def test_a_small_message_is_stored() -> None:
    data = b"a line of output\n" * 10
    assert len(data) < MIN_COMPRESS_BYTES
    sent = GZIP.compress(data)
    assert len(sent) > len(data)
    assert gzip.decompress(sent) == data


def test_output_that_does_not_halve_is_stored() -> None:
    for data in (os.urandom(64 * 1024), random_text(64 * 1024)):
        sent = GZIP.compress(data)
        assert len(data) < len(sent) < len(data) + 100
        assert GZIP.decompress(sent) == data


def test_repetitive_output_is_compressed() -> None:
    data = b"building target 14 of 200: ok\n" * 4000
    sent = GZIP.compress(data)
    assert len(sent) < len(data) // 10
    assert gzip.decompress(sent) == data


@pytest.mark.parametrize("size", [0, 1, 65535, 65536, 200 * 1024])
def test_a_stored_member_is_gzip_both_ways(size: int) -> None:
    data = os.urandom(size)
    assert gzip.decompress(stored(data)) == data
    assert GZIP.decompress(stored(data)) == data
    for level in (0, 1, 6):
        assert GZIP.decompress(gzip.compress(data, compresslevel=level)) == data


def test_a_damaged_stored_member_is_refused() -> None:
    sent = bytearray(stored(b"some output\n" * 100))
    sent[-12] ^= 1
    with pytest.raises(Exception, match="CRC"):
        GZIP.decompress(bytes(sent))


def test_a_stored_member_over_the_read_limit_is_refused() -> None:
    with pytest.raises(ConnectError):
        GZIP.decompress(stored(b"x" * 1000), read_max_bytes=999)
