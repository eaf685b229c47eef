"""The committed generated code is what `buf generate` makes from proto/ today."""

from __future__ import annotations

import filecmp
import subprocess
from pathlib import Path

from tests.helpers import ROOT, tool, tool_env


def _files(top: Path) -> set[Path]:
    return {p.relative_to(top) for p in top.rglob("*.py")}


def _buf(*args: str) -> None:
    done = subprocess.run(
        [tool("buf"), *args],
        cwd=ROOT,
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    _buf("generate", "--output", str(tmp_path))
    fresh = tmp_path / "airunner" / "api"
    committed = ROOT / "airunner" / "api"
    assert _files(fresh) == _files(committed), "run `buf generate` and commit airunner/api"
    stale = [
        str(path)
        for path in _files(fresh)
        if not filecmp.cmp(fresh / path, committed / path, False)
    ]
    assert not stale, f"stale generated files {stale}: run `buf generate` and commit airunner/api"


def test_schema_passes_buf_lint() -> None:
    _buf("lint")


def test_schema_keeps_every_original_field() -> None:
    """Clients built on the first schema keep working: fields and methods are only added."""
    _buf("breaking", "proto", "--against", "tests/fixtures/original_proto")
