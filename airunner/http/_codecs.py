"""The message codecs the server speaks, with a guard in front of the JSON parser.

protobuf-py's native JSON reader recurses once per nesting level and crashes the
whole process (SIGSEGV, no log line) from a depth of about 20,000: one request of
about 40 KB could end the server. Its binary reader stops at a depth of 100 with
an error, which connectrpc answers with ``invalid_argument``. The JSON codec
here refuses the same depth before the parser sees the body. No message of the
API nests deeper than a few levels.
"""

from __future__ import annotations

from typing import Any

from connectrpc.code import Code
from connectrpc.codec import Codec, proto_binary_codec, proto_json_codec
from connectrpc.errors import ConnectError

# The deepest nesting of JSON arrays and objects a request may have: the limit
# protobuf-py's binary reader applies to nested messages.
MAX_JSON_NESTING = 100

_NOT_BRACKETS_OR_QUOTES = bytes(b for b in range(256) if b not in b'[]{}"')
# Passes of removing innermost pairs tried before counting the depth one
# bracket at a time; each pass is a C-speed scan and most bodies are empty after
# a few, while a deep body stops the count early.
_PAIR_PASSES = 8


def json_nesting_exceeds(data: bytes | bytearray, limit: int = MAX_JSON_NESTING) -> bool:
    """Whether JSON ``data`` nests arrays and objects deeper than ``limit``.

    Malformed text (unbalanced brackets) is left to the parser, which refuses
    it, unless it opens more than ``limit`` levels first.
    """
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    brackets = _brackets(bytes(data))
    # A body that goes deep at once is told by its first brackets.
    if _deepest(brackets[: 8 * limit]) > limit:
        return True
    # Each pass removes every innermost pair, taking one level off the deepest
    # nesting of balanced brackets.
    passes = 0
    while brackets and passes < _PAIR_PASSES:
        brackets = brackets.replace(b"[]", b"").replace(b"{}", b"")
        passes += 1
    return _deepest(brackets) > limit - passes


def _brackets(text: bytes) -> bytes:
    """The brackets of JSON ``text`` outside its strings, in order."""
    # Without its escaped backslashes and quotes, a string is the text between
    # two quotes; what is left is every other piece between quotes.
    unescaped = text.replace(b"\\\\", b"").replace(b'\\"', b"")
    return b"".join(unescaped.translate(None, _NOT_BRACKETS_OR_QUOTES).split(b'"')[::2])


def _deepest(brackets: bytes) -> int:
    depth = deepest = 0
    for byte in brackets:
        if byte in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


class _NestingLimitedJSONCodec:
    """Connect's JSON codec, refusing bodies nested deeper than MAX_JSON_NESTING."""

    def __init__(self) -> None:
        self._json = proto_json_codec()

    def name(self) -> str:
        return self._json.name()

    def encode(self, message: Any) -> bytes:
        return self._json.encode(message)

    def decode(self, data: bytes | bytearray, message_class: type[Any]) -> Any:
        if json_nesting_exceeds(data):
            raise ConnectError(
                Code.INVALID_ARGUMENT,
                f"JSON nested deeper than {MAX_JSON_NESTING} levels",
            )
        return self._json.decode(data, message_class)


def server_codecs() -> list[Codec]:
    """The codecs of every service: Protocol Buffers binary and guarded JSON."""
    return [proto_binary_codec(), _NestingLimitedJSONCodec()]
