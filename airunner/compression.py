"""Gzip where it pays: the compression the client and the server both speak.

connectrpc compresses every message of a call alike, at gzip level 6 by
default: for output that does not compress (random text, binary) that costs
most of a worker's and a server's time for a few per cent of bytes. Here each
message is looked at first:

- messages under ``MIN_COMPRESS_BYTES`` are sent stored (uncompressed gzip);
- for the rest, a sample is compressed at level 1: when it shrinks to at most
  ``MAX_RATIO`` of its size the whole message is compressed at level 1, else it
  is sent stored.

A stored gzip member (zlib at level 0) costs a copy and a CRC; it is still
gzip, so any Connect peer reads it (connectrpc sets the envelope's compressed
flag per call, not per message).
"""

from __future__ import annotations

import gzip
import zlib

from connectrpc.compression.gzip import GzipCompression

MIN_COMPRESS_BYTES = 4 * 1024
SAMPLE_BYTES = 4 * 1024
# Compress only what this shrinks to at most half its size.
MAX_RATIO = 0.5
FAST_LEVEL = 1
# zlib's window bits for a gzip member (16 + the largest window).
GZIP_WBITS = 16 + zlib.MAX_WBITS


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


def stored(data: bytes | bytearray | memoryview) -> bytes:
    """``data`` as one gzip member of stored (uncompressed) deflate blocks."""
    compressor = zlib.compressobj(0, zlib.DEFLATED, GZIP_WBITS)
    return compressor.compress(data) + compressor.flush()


GZIP = AdaptiveGzip()
