"""The JSON guard in front of protobuf-py's parser, which crashes on deep nesting."""

from __future__ import annotations

import json

import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError

from airunner.api.job.v1.job_pb import EnqueueJobRequest
from airunner.http import MAX_JSON_NESTING
from airunner.http._codecs import json_nesting_exceeds, server_codecs


def nested(depth: int, opening: bytes = b"[", closing: bytes = b"]") -> bytes:
    return opening * depth + closing * depth


@pytest.mark.parametrize(
    ("body", "too_deep"),
    [
        (nested(MAX_JSON_NESTING), False),
        (nested(MAX_JSON_NESTING + 1), True),
        (nested(200_000), True),
        (b'{"a":' * (MAX_JSON_NESTING + 1) + b"1" + b"}" * (MAX_JSON_NESTING + 1), True),
        # Unbalanced: only its opening matters.
        (b"[" * (MAX_JSON_NESTING + 1), True),
        # Wide, not deep.
        (b"[" + b"[[[]]]," * 100_000 + b"[]]", False),
        # Deep after a wide start.
        (b"[" + b"[]," * 100_000 + nested(MAX_JSON_NESTING) + b"]", True),
        (b"[" + b"[]," * 100_000 + nested(MAX_JSON_NESTING - 1) + b"]", False),
        # Brackets inside strings, escaped quotes and backslashes included, do not nest.
        (json.dumps({"args": ["[" * 500, '\\"[[' * 100, "\\" * 7]}).encode(), False),
        (json.dumps(["[" * 500, "\\", [[["]"]]]]).encode(), False),
    ],
)
def test_nesting_is_measured_outside_strings(body: bytes, too_deep: bool) -> None:
    assert json_nesting_exceeds(body) is too_deep


def test_strings_hide_brackets_only_until_their_closing_quote() -> None:
    inside = json.dumps("\\" + '"' + "[" * 300).encode()  # "\\\"[[[..." stays one string
    assert not json_nesting_exceeds(b"[" + inside + b"]")
    after = b'["\\\\"' + b"[" * (MAX_JSON_NESTING + 1)  # the string ends after \\
    assert json_nesting_exceeds(after)


def test_the_json_codec_refuses_deep_bodies_before_parsing() -> None:
    codec = next(c for c in server_codecs() if c.name() == "json")
    deep = b'{"jobParams":{"metadata":' * 100_000 + b"{}" + b"}}" * 100_000
    with pytest.raises(ConnectError) as refused:
        codec.decode(deep, EnqueueJobRequest)
    assert refused.value.code == Code.INVALID_ARGUMENT
    assert str(MAX_JSON_NESTING) in refused.value.message
    body = b'{"queue":"default","jobParams":{"command":"make"}}'
    request = codec.decode(body, EnqueueJobRequest)
    assert request.job_params is not None
    assert request.job_params.command == "make"
