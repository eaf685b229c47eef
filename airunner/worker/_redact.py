"""Redactor: a job's secret values replaced in its output before it is published."""

from __future__ import annotations

from collections.abc import Iterable

# What a secret's value becomes in the output.
REDACTED = b"[REDACTED]"
# Values shorter than this are not redacted: a secret "1" or "no" would blank
# every such digit or word of ordinary output (and tell where it was).
MIN_SECRET_BYTES = 4


def secret_values(values: Iterable[str]) -> list[bytes]:
    """The values that are redacted, as the bytes the job's output holds them in."""
    return sorted(
        {v.encode() for v in values if len(v.encode()) >= MIN_SECRET_BYTES},
        key=len,
        reverse=True,
    )


class Redactor:
    """Replaces the secrets in one stream of output, fed in pieces.

    Every byte that is part of an occurrence of any secret is hidden (where
    occurrences overlap, their union), each run of hidden bytes becoming one
    ``REDACTED``; so the result does not depend on how the stream was cut.
    ``feed`` holds back only the bytes at its end that could begin a secret,
    and returns the rest at once; ``flush`` gives up what it holds (at the end
    of the stream, or when no more came for a while: a secret whose rest comes
    after that is not hidden).
    """

    def __init__(self, secrets: Iterable[bytes]) -> None:
        self._secrets = [s for s in secrets if s]
        self._held = b""
        # The first bytes of ``_held`` that an occurrence already seen covers.
        self._held_hidden = 0
        # The last byte given out was hidden: a run that goes on is not marked twice.
        self._hiding = False

    @property
    def held_bytes(self) -> int:
        """How many bytes of the stream ``feed`` holds back."""
        return len(self._held)

    def feed(self, data: bytes) -> bytes:
        """What of the stream so far can be given out, redacted."""
        if not self._secrets:
            return data
        buffer = self._held + data
        return self._take(buffer, len(buffer) - self._open_end(buffer))

    def flush(self) -> bytes:
        """All that is held, redacted."""
        return self._take(self._held, len(self._held))

    def _open_end(self, buffer: bytes) -> int:
        """The length of the longest end of ``buffer`` that begins a secret but is
        not all of it: what could be a secret once more comes."""
        longest = 0
        for secret in self._secrets:
            # Only where the secret's first byte is can one of its beginnings start.
            start = max(len(buffer) - len(secret) + 1, 0)
            at = buffer.find(secret[:1], start)
            while at != -1:
                length = len(buffer) - at
                if length <= longest:
                    break
                if secret.startswith(buffer[at:]):
                    longest = length
                    break
                at = buffer.find(secret[:1], at + 1)
        return longest

    def _take(self, buffer: bytes, end: int) -> bytes:
        """Give out ``buffer[:end]`` redacted; hold the rest."""
        hidden = bytearray(len(buffer))
        hidden[: self._held_hidden] = b"\1" * self._held_hidden
        for secret in self._secrets:
            at = buffer.find(secret)
            while at != -1:
                hidden[at : at + len(secret)] = b"\1" * len(secret)
                at = buffer.find(secret, at + 1)
        out = bytearray()
        start = 0
        while start < end:
            if hidden[start]:
                stop = hidden.find(0, start, end)
                stop = end if stop == -1 else stop
                if not self._hiding:
                    out += REDACTED
                self._hiding = True
            else:
                stop = hidden.find(1, start, end)
                stop = end if stop == -1 else stop
                out += buffer[start:stop]
                self._hiding = False
            start = stop
        self._held = buffer[end:]
        # Occurrences that began in the part given out and reach into the held
        # part; those that begin in it are found again with what comes next.
        self._held_hidden = 0
        while self._held_hidden < len(self._held) and hidden[end + self._held_hidden]:
            self._held_hidden += 1
        return bytes(out)


def redact(data: bytes, secrets: Iterable[bytes]) -> bytes:
    """``data`` with its secrets redacted, as a Redactor fed it whole gives it."""
    redactor = Redactor(secrets)
    return redactor.feed(data) + redactor.flush()


def redact_text(text: str, secrets: Iterable[bytes]) -> str:
    """A message with the secrets in it redacted."""
    # A secret is whole characters of UTF-8, and so is each run it covers.
    return redact(text.encode(), secrets).decode()
