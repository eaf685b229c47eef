"""Every metric docs/ARCHITECTURE.md names is an instrument airunner records, and back."""

from __future__ import annotations

import re

from opentelemetry import metrics

from airunner import telemetry
from tests.helpers import ROOT


def _documented() -> set[str]:
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    section = text.split("\n## Telemetry\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(airunner\.[a-z_.]+)` \|", section, re.MULTILINE))


def _recorded() -> set[str]:
    return {
        str(getattr(value, "name", None) or value._name)
        for value in vars(telemetry).values()
        if isinstance(value, metrics.Instrument)
    }


def test_documented_metrics_are_the_recorded_ones() -> None:
    documented = _documented()
    assert len(documented) >= 17
    assert documented == _recorded()
