"""Gzip where it pays: the compression the client and the server both speak.

connectrpc compresses every message of a call alike, at gzip level 6 by
default: for output that does not compress (random text, binary) that costs
most of a worker's and a server's time for a few per cent of bytes. Here each
message is looked at first:

- messages under ``MIN_COMPRESS_BYTES`` are sent stored (uncompressed gzip);
- for the rest, a sample is compressed at level 1: when it shrinks to at most
  ``MAX_RATIO`` of its size the whole message is compressed at level 1, else it
  is sent stored.

A stored gzip member costs a copy and a CRC; it is still gzip, so any Connect
peer reads it (the envelope's compressed flag is per call, not per message).
It is built and read here without zlib's deflate machinery (three times
faster both ways); anything else goes to zlib.
"""

from __future__ import annotations

import gzip
import struct
import zlib

from connectrpc._shared import message_too_large_error
from connectrpc.compression.gzip import GzipCompression

MIN_COMPRESS_BYTES = 4 * 1024
SAMPLE_BYTES = 4 * 1024
# Compress only what this shrinks to at most half its size.
MAX_RATIO = 0.5
FAST_LEVEL = 1


def worth_compressing(data: bytes | bytearray | memoryview) -> bool:
    """Whether ``data`` is long enough and its sample shrinks enough at the fast level."""
    if len(data) < MIN_COMPRESS_BYTES:
        return False
    sample = memoryview(data)[:SAMPLE_BYTES]
    compressor = zlib.compressobj(FAST_LEVEL)
    size = len(compressor.compress(sample)) + len(compressor.flush())
    return size <= len(sample) * MAX_RATIO


class AdaptiveGzip(GzipCompression):
    """``gzip`` at level 1 for messages that shrink, stored for the rest."""

    def __init__(self) -> None:
        super().__init__(level=FAST_LEVEL)

    def compress(self, data: bytes | bytearray | memoryview) -> bytes:
        if worth_compressing(data):
            return gzip.compress(data, compresslevel=FAST_LEVEL)
        return stored(data)

    def decompress(
        self, data: bytes | bytearray | memoryview, read_max_bytes: int | None = None
    ) -> bytes:
        content = _read_stored(memoryview(data))
        if content is None:
            return super().decompress(data, read_max_bytes)
        if read_max_bytes is not None and len(content) > read_max_bytes:
            raise message_too_large_error(read_max_bytes)
        return content


# A gzip member's header with no optional fields, no time, an unknown OS.
_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
_MAX_STORED_BLOCK = 0xFFFF
_BLOCK = struct.Struct("<BHH")
_TRAILER = struct.Struct("<II")


def stored(data: bytes | bytearray | memoryview) -> bytes:
    """``data`` as one gzip member of stored (uncompressed) deflate blocks."""
    view = memoryview(data).cast("B")
    size = len(view)
    parts: list[bytes | memoryview] = [_HEADER]
    at = 0
    while True:
        block = view[at : at + _MAX_STORED_BLOCK]
        at += len(block)
        final = at >= size
        parts += [_BLOCK.pack(final, len(block), len(block) ^ 0xFFFF), block]
        if final:
            break
    parts.append(_TRAILER.pack(zlib.crc32(view), size & 0xFFFFFFFF))
    return b"".join(parts)


def _read_stored(view: memoryview) -> bytes | None:
    """The content of one gzip member made only of stored blocks, else None.

    None also for anything malformed: zlib then reads it and says what is wrong.
    """
    view = view.cast("B")
    if view[: len(_HEADER) - 2] != _HEADER[:-2]:
        return None
    at = len(_HEADER)
    parts = []
    while True:
        if at + _BLOCK.size > len(view):
            return None
        header, length, inverse = _BLOCK.unpack_from(view, at)
        if header not in (0, 1) or length ^ inverse != 0xFFFF:
            return None
        at += _BLOCK.size
        if at + length > len(view):
            return None
        parts.append(view[at : at + length])
        at += length
        if header == 1:
            break
    if at + _TRAILER.size != len(view):
        return None
    content = b"".join(parts)
    if _TRAILER.unpack_from(view, at) != (zlib.crc32(content), len(content) & 0xFFFFFFFF):
        return None
    return content


GZIP = AdaptiveGzip()
