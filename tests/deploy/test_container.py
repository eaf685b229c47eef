"""The Containerfile: linted by hadolint, its install steps run in a fresh virtualenv.

No container engine runs here, so the build stage's steps are replayed in a temp
directory (its COPY and ENV lines applied, /opt/airunner moved under it), and
the final stage is checked for what a small, safe image needs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import ROOT, clean_env, tool

pytestmark = pytest.mark.deploy

CONTAINERFILE = ROOT / "Containerfile"
PREFIX = "/opt/airunner"


@dataclass
class Stage:
    base: str
    name: str = ""
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [arguments for k, arguments in self.instructions if k == keyword]


def _stages() -> list[Stage]:
    text = re.sub(r"\\\n", " ", CONTAINERFILE.read_text())
    stages: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, arguments = line.partition(" ")
        keyword, arguments = keyword.upper(), " ".join(arguments.split())
        if keyword == "FROM":
            base, _, name = arguments.partition(" AS ")
            stages.append(Stage(base=base, name=name))
        else:
            stages[-1].instructions.append((keyword, arguments))
    return stages


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [tool("hadolint"), "--no-color", str(CONTAINERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_final_stage_is_small_and_runs_the_server_as_a_user() -> None:
    build, final = _stages()
    assert build.name == "build"
    assert build.base == final.base, "one base image for both stages"
    assert not final.name
    assert final.all("COPY") == [f"--from=build {PREFIX} {PREFIX}"]
    (run,) = final.all("RUN")
    # No compilers, no package lists or caches left behind.
    assert not re.search(r"\b(gcc|g\+\+|make|build-essential|python3-dev)\b", run)
    assert "--no-install-recommends" in run
    assert "rm -rf /var/lib/apt/lists/*" in run
    assert "pip" not in run
    (user,) = final.all("USER")
    assert user.isdigit()
    assert int(user) != 0
    assert final.all("EXPOSE") == ["8080"]
    (healthcheck,) = final.all("HEALTHCHECK")
    assert "http://127.0.0.1:8080/health" in healthcheck
    assert final.all("CMD") == ['["airunner-server", "rpc-server", "--listen", "0.0.0.0:8080"]']
    assert any("PATH=/opt/airunner/bin:$PATH" in env for env in final.all("ENV"))


def test_build_stage_installs_airunner_in_a_fresh_virtualenv(tmp_path: Path) -> None:
    build, _ = _stages()
    context = tmp_path / "context"
    prefix = tmp_path / "opt" / "airunner"
    env = clean_env()
    # `python` is the base image's interpreter; here, the one running the tests.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("VIRTUAL_ENV", None)
    workdir = context
    for keyword, arguments in build.instructions:
        if keyword == "WORKDIR":
            workdir = context / arguments.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif keyword == "ENV":
            env.update(pair.split("=", 1) for pair in arguments.split())
        elif keyword == "COPY":
            *sources, destination = arguments.split()
            target = workdir / destination
            for source in sources:
                origin = ROOT / source
                if origin.is_dir():
                    shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy(origin, target / origin.name)
        elif keyword == "RUN":
            command = arguments.replace(PREFIX, str(prefix))
            result = subprocess.run(
                ["sh", "-c", command],
                cwd=workdir,
                env=env,
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
            )
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        else:
            pytest.fail(f"the test does not know how to replay {keyword}")
    for command in ("airunner-server", "airunner-cli"):
        result = subprocess.run(
            [str(prefix / "bin" / command), "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            env=clean_env(),
            check=False,
        )
        assert result.returncode == 0, result.stderr
    # Only the package went in: no test tools in the image.
    installed = {p.name.split("-")[0].lower() for p in prefix.glob("lib/python*/site-packages/*")}
    assert "airunner" in installed
    assert not {"pytest", "moto", "ruff", "mypy"} & installed
