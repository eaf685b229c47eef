"""Gzip where it pays: the compression the client and the server both speak.

connectrpc compresses every message of a call alike, at gzip level 6 by
default: for output that does not compress (random text, binary) that costs
most of a worker's and a server's time for a few per cent of bytes. Here each
message is looked at first:

- messages under ``MIN_COMPRESS_BYTES`` are sent stored (uncompressed gzip);
- for the rest, a sample is compressed at level 1: when it shrinks to at most
  ``MAX_RATIO`` of its size the whole message is compressed at level 1, else it
  is sent stored.

A stored gzip member (deflate at level 0) costs a copy and a CRC; it is still
gzip, so any Connect peer reads it (connectrpc sets the envelope's compressed
flag per call, not per message).

Both ways the work is zlib-ng's (``zlib_ng``, the same gzip format): its CRC,
copies and fast level run at several GB/s where the system zlib's CRC alone
runs at about 4, which made stored members cost a third of a server's time
when output does not compress.
"""

from __future__ import annotations

from connectrpc.code import Code
from connectrpc.compression.gzip import GzipCompression
from connectrpc.errors import ConnectError
from zlib_ng import zlib_ng

MIN_COMPRESS_BYTES = 4 * 1024
SAMPLE_BYTES = 4 * 1024
# Compress only what this shrinks to at most half its size.
MAX_RATIO = 0.5
FAST_LEVEL = 1
# zlib's window bits for a gzip member (16 + the largest window).
GZIP_WBITS = 16 + zlib_ng.MAX_WBITS
# The largest output buffer a message is decompressed into at first (it grows
# past this as needed).
MAX_HINT_BYTES = 16 * 1024 * 1024


def worth_compressing(data: bytes | bytearray | memoryview) -> bool:
    """Whether ``data`` is long enough and its sample shrinks enough at the fast level."""
    if len(data) < MIN_COMPRESS_BYTES:
        return False
    sample = memoryview(data)[:SAMPLE_BYTES]
    compressor = zlib_ng.compressobj(FAST_LEVEL)
    size = len(compressor.compress(sample)) + len(compressor.flush())
    return size <= len(sample) * MAX_RATIO


class AdaptiveGzip(GzipCompression):
    """``gzip`` at level 1 for messages that shrink, stored for the rest."""

    def __init__(self) -> None:
        super().__init__(level=FAST_LEVEL)

    def compress(self, data: bytes | bytearray | memoryview) -> bytes:
        if worth_compressing(data):
            return zlib_ng.compress(data, FAST_LEVEL, wbits=GZIP_WBITS)
        return stored(data)

    def decompress(
        self, data: bytes | bytearray | memoryview, read_max_bytes: int | None = None
    ) -> bytes:
        """The gzip members of ``data``, refused past ``read_max_bytes`` decompressed."""
        # A member ends with its size (mod 2**32): the last one's sizes the
        # first output buffer, which zlib otherwise grows step by step from a
        # small one or, given only the read limit, makes that big (8 MiB on a
        # server). Past the limit by one byte is enough to refuse.
        expected: int | None = min(int.from_bytes(data[-4:], "little"), MAX_HINT_BYTES) + 1
        parts: list[bytes] = []
        total = 0
        rest = data
        while rest:
            decompressor = zlib_ng.decompressobj(wbits=GZIP_WBITS)
            while True:
                room = None if read_max_bytes is None else read_max_bytes + 1 - total
                # At most the smaller of the two; 0: no limit.
                out = decompressor.decompress(rest, min(filter(None, (room, expected)), default=0))
                expected = None
                parts.append(out)
                total += len(out)
                if read_max_bytes is not None and total > read_max_bytes:
                    raise ConnectError(
                        Code.RESOURCE_EXHAUSTED,
                        f"message is larger than configured max {read_max_bytes}",
                    )
                # Stopped at the size it was given, short of the member's end.
                rest = decompressor.unconsumed_tail
                if decompressor.eof or not rest:
                    break
            if not decompressor.eof:
                raise EOFError("compressed data ended before the end-of-stream marker")
            rest = decompressor.unused_data
        return b"".join(parts)


def stored(data: bytes | bytearray | memoryview) -> bytes:
    """``data`` as one gzip member of stored (uncompressed) deflate blocks."""
    return zlib_ng.compress(data, 0, wbits=GZIP_WBITS)


GZIP = AdaptiveGzip()
