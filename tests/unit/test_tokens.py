from __future__ import annotations

import pytest

from airunner.store import InvalidArgument, TaskToken, TaskTokenSigner


def test_round_trip_keeps_every_claim() -> None:
    signer = TaskTokenSigner(b"secret")
    token = TaskToken("job", "default", 3, receipt_handle="AQEB+/==handle")
    assert signer.verify(signer.sign(token)) == token


def test_tokens_are_versioned_and_url_safe() -> None:
    text = TaskTokenSigner(b"secret").sign(TaskToken("job", "default", 1))
    assert text.startswith("v1.")
    assert all(c.isalnum() or c in "-_." for c in text)


@pytest.mark.parametrize("position", [3, 10, -5])
def test_any_changed_character_is_refused(position: int) -> None:
    signer = TaskTokenSigner(b"secret")
    text = signer.sign(TaskToken("job", "default", 1))
    changed = "A" if text[position] != "A" else "B"
    tampered = text[:position] + changed + text[position + 1 :]
    with pytest.raises(InvalidArgument):
        signer.verify(tampered)


def test_other_secret_is_refused() -> None:
    text = TaskTokenSigner(b"one").sign(TaskToken("job", "default", 1))
    with pytest.raises(InvalidArgument, match="signature does not match"):
        TaskTokenSigner(b"two").verify(text)


@pytest.mark.parametrize("text", ["", "v1", "v1.a", "v1.a.b.c", "x" * 10_000, "v1.!!.??"])
def test_malformed_tokens_are_refused(text: str) -> None:
    with pytest.raises(InvalidArgument):
        TaskTokenSigner(b"secret").verify(text)


def test_empty_secret_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        TaskTokenSigner(b"")
