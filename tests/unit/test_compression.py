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


@pytest.mark.parametrize("size", [0, 1, 65535, 65536, 2 * 65535, 200 * 1024])
def test_a_stored_member_is_gzip_both_ways(size: int) -> None:
    data = os.urandom(size)
    assert gzip.decompress(stored(data)) == data
    assert GZIP.decompress(stored(data)) == data
    for level in (0, 1, 6):
        assert GZIP.decompress(gzip.compress(data, compresslevel=level)) == data


def test_a_damaged_stored_member_is_refused() -> None:
    sent = bytearray(stored(b"some output\n" * 100))
    sent[-12] ^= 1
    with pytest.raises(Exception, match="incorrect data check"):
        GZIP.decompress(bytes(sent))


def test_a_cut_member_is_refused() -> None:
    sent = gzip.compress(b"some output\n" * 100)
    with pytest.raises(EOFError):
        GZIP.decompress(sent[:-4])


def test_members_one_after_another_are_read_as_one_message() -> None:
    data = os.urandom(1000)
    assert GZIP.decompress(stored(data) + gzip.compress(data)) == data + data


@pytest.mark.parametrize("limit", [None, 64 * 1024 * 1024])
def test_members_read_whatever_the_size_their_trailer_gives(limit: int | None) -> None:
    # The output buffer is sized by the last member's trailer: too small for
    # the first member here, and for a member that lies about its size.
    big, small = os.urandom(300 * 1024), b"tail\n"
    assert GZIP.decompress(gzip.compress(big) + stored(small), limit) == big + small
    lying = bytearray(stored(big))
    lying[-4:] = (10).to_bytes(4, "little")
    with pytest.raises(Exception, match="incorrect length check"):
        GZIP.decompress(bytes(lying), limit)
    huge = bytes(16 * 1024 * 1024 + 1000)
    assert GZIP.decompress(gzip.compress(huge, compresslevel=1), limit) == huge


def test_a_stored_member_over_the_read_limit_is_refused() -> None:
    with pytest.raises(ConnectError):
        GZIP.decompress(stored(b"x" * 1000), read_max_bytes=999)
    assert GZIP.decompress(stored(b"x" * 1000), read_max_bytes=1000) == b"x" * 1000


def test_a_compressed_member_over_the_read_limit_is_refused_before_it_is_all_read() -> None:
    bomb = gzip.compress(bytes(64 * 1024 * 1024))
    with pytest.raises(ConnectError, match="larger than configured max 1000"):
        GZIP.decompress(bomb, read_max_bytes=1000)
    with pytest.raises(ConnectError):
        GZIP.decompress(stored(b"x" * 600) + stored(b"x" * 600), read_max_bytes=1000)
