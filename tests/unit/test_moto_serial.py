"""The tests' moto server takes DynamoDB requests one at a time, SQS requests at once."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from tests.moto_serial import serialize_dynamodb


class _Gate:
    """A WSGI app that holds every request until opened, and says when two are in."""

    def __init__(self) -> None:
        self.inside = 0
        self.first_in = threading.Event()
        self.two_in = threading.Event()
        self.opened = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start: Callable[..., Any]) -> Iterable[bytes]:
        with self._lock:
            self.inside += 1
            (self.two_in if self.inside == 2 else self.first_in).set()
        self.opened.wait(timeout=10)
        with self._lock:
            self.inside -= 1
        return [b"{}"]


def _two_requests(target: str, gate: _Gate) -> list[threading.Thread]:
    app = serialize_dynamodb(gate)
    environ = {"HTTP_X_AMZ_TARGET": target}
    calls = [
        threading.Thread(target=lambda: list(app(environ, lambda *_: None))) for _ in range(2)
    ]
    calls[0].start()
    assert gate.first_in.wait(timeout=10)
    calls[1].start()
    return calls


def _finish(gate: _Gate, calls: list[threading.Thread]) -> None:
    gate.opened.set()
    for call in calls:
        call.join(timeout=10)
        assert not call.is_alive()


def test_a_dynamodb_request_waits_for_the_one_in_progress() -> None:
    gate = _Gate()
    calls = _two_requests("DynamoDB_20120810.UpdateItem", gate)
    # The second stays out however long the first takes (half a second here).
    assert not gate.two_in.wait(timeout=0.5)
    _finish(gate, calls)


def test_sqs_requests_run_at_once() -> None:
    gate = _Gate()
    calls = _two_requests("AmazonSQS.ReceiveMessage", gate)
    assert gate.two_in.wait(timeout=10)
    _finish(gate, calls)
