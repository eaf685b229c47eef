"""Redactor: secrets hidden in output however it is cut, and nothing else held back."""

from __future__ import annotations

import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from airunner.api.job.v1.job_pb import JobEvent, StreamType
from airunner.worker import BatchLimits, OutputBatcher, OutputChunk, Sequencer
from airunner.worker._redact import REDACTED, Redactor, redact, redact_text, secret_values

# Few letters: secrets overlap, repeat and begin one another often. None of
# them is in REDACTED, so a secret found in the result was not hidden.
secrets_st = st.lists(
    st.binary(min_size=1, max_size=6).map(lambda b: bytes(97 + x % 3 for x in b)),
    min_size=1,
    max_size=4,
)
data_st = st.binary(max_size=60).map(lambda b: bytes(97 + x % 4 for x in b))


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def open_end(data: bytes, secrets: list[bytes]) -> int:
    """The longest end of ``data`` that begins some secret and is not all of it."""
    return max(
        (
            n
            for s in secrets
            for n in range(1, len(s))
            if n <= len(data) and s.startswith(data[-n:])
        ),
        default=0,
    )


@given(secrets_st, data_st, st.lists(st.integers(min_value=0, max_value=60)))
def test_cutting_the_stream_anywhere_gives_the_same_output(
    secrets: list[bytes], data: bytes, cuts: list[int]
) -> None:
    redactor = Redactor(secrets)
    out = b"".join(redactor.feed(piece) for piece in pieces(data, cuts)) + redactor.flush()
    assert out == redact(data, secrets)


@given(secrets_st, data_st)
def test_no_secret_is_left(secrets: list[bytes], data: bytes) -> None:
    out = redact(data, secrets)
    for secret in secrets:
        assert secret not in out
    # Hidden runs never stand side by side: each became one marker.
    assert REDACTED + REDACTED not in out
    # What no secret touches comes out as it went in.
    if not any(s in data for s in secrets):
        assert out == data


@given(secrets_st, data_st, st.lists(st.integers(min_value=0, max_value=60)))
def test_only_what_could_begin_a_secret_is_held_back(
    secrets: list[bytes], data: bytes, cuts: list[int]
) -> None:
    redactor = Redactor(secrets)
    fed = b""
    for piece in pieces(data, cuts):
        redactor.feed(piece)
        fed += piece
        assert redactor.held_bytes == open_end(fed, secrets)


def test_a_secret_cut_across_reads_is_hidden() -> None:
    redactor = Redactor([b"hunter22"])
    assert redactor.feed(b"password: hun") == b"password: "
    assert redactor.feed(b"ter") == b""
    assert redactor.feed(b"22 ok\n") == REDACTED + b" ok\n"
    assert redactor.flush() == b""


def test_held_bytes_are_given_out_as_they_are_when_the_secret_does_not_follow() -> None:
    redactor = Redactor([b"hunter22"])
    assert redactor.feed(b"a hunt") == b"a "
    assert redactor.feed(b"ing trip") == b"hunting trip"
    assert redactor.feed(b" hunter") == b" "
    assert redactor.flush() == b"hunter"


def test_overlapping_secrets_are_hidden_as_one_run() -> None:
    assert redact(b"x abcdef y", [b"abcd", b"cdef"]) == b"x " + REDACTED + b" y"
    assert redact(b"abcdabcd", [b"abcd"]) == REDACTED


def test_values_too_short_to_redact_are_left() -> None:
    assert secret_values(["", "abc", "abcd", "pässword"]) == ["pässword".encode(), b"abcd"]


def test_messages_are_redacted() -> None:
    secrets = secret_values(["s3cr3t-välue"])
    assert redact_text("command not found: ./s3cr3t-välue", secrets) == (
        "command not found: ./[REDACTED]"
    )


class Recorder:
    def __init__(self) -> None:
        self.items: list[tuple[float, StreamType, bytes]] = []

    async def emit(self, event: JobEvent) -> None:
        for item in event.event_data.value.outputs:  # type: ignore[union-attr]
            self.items.append((trio.current_time(), item.stream_type, item.output))


async def test_the_batcher_redacts_each_stream_and_waits_a_flush_interval_at_most(
    autojump_clock: trio.testing.MockClock,
) -> None:
    recorder = Recorder()
    limits = BatchLimits(
        max_items=1000,
        max_bytes=1 << 20,
        max_item_bytes=1 << 20,
        flush_interval=0.1,
        playback_interval_millis=0,
    )
    batcher = OutputBatcher(limits, Sequencer(), recorder.emit, secrets=[b"hunter22"])
    send, receive = trio.open_memory_channel[OutputChunk](0)
    out, err = StreamType.STDOUT, StreamType.STDERR
    async with trio.open_nursery() as nursery:
        nursery.start_soon(batcher.run, receive)
        async with send:
            # Cut across two reads of one stream, another stream between them.
            await send.send(OutputChunk(b"pw hunt", out, 0))
            await send.send(OutputChunk(b"hunter22?", err, 0))
            await trio.sleep(0.05)
            await send.send(OutputChunk(b"er22\n", out, 0))
            # A beginning with nothing after it is given out after the interval.
            await send.send(OutputChunk(b"hunt", out, 0))
            await trio.sleep(1)
            await send.send(OutputChunk(b"er22", out, 0))
            await send.send(OutputChunk(b"hunter", err, 0))
    text = {
        stream: b"".join(data for _, s, data in recorder.items if s == stream)
        for stream in (out, err)
    }
    assert text[out] == b"pw " + REDACTED + b"\nhunter22"
    assert text[err] == REDACTED + b"?hunter"
    # "pw " came at once; the held "hunt" within the interval, not at the end.
    assert recorder.items[0] == (0.0, out, b"pw ")
    assert (0.15, out, b"hunt") in [(round(t, 3), s, d) for t, s, d in recorder.items]
