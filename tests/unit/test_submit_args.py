"""How submit turns its command line and job file into an EnqueueJob request."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from airunner.api.job.v1.job_pb import EnqueueJobRequest, ProcessType
from airunner.cli import CliError, job_request
from airunner.cli.main import parse_args


def parse(*argv: str) -> EnqueueJobRequest:
    return job_request(parse_args(["submit", *argv]))


def test_command_line_after_dashes(tmp_path: Path) -> None:
    request = parse(str(tmp_path), "--env", "A=1", "--", "sh", "-c", "echo --not-an-option")
    assert request.queue == "default"
    assert request.request_id
    params = request.job_params
    assert (params.command, params.args) == ("sh", ["-c", "echo --not-an-option"])
    assert params.repository == str(tmp_path)
    assert params.environment == {"A": "1"}


def test_flags_override_the_job_file(tmp_path: Path) -> None:
    config = tmp_path / "job.yaml"
    config.write_text(
        "repository: https://example.com/repo.git\n"
        "command: make\nargs: [test]\nqueue: priority\nprocess_type: pty\n"
        "timeout_seconds: 60\nenvironment: {A: '1', B: '2'}\nbranch: main\nmax_attempts: 2\n"
    )
    request = parse(
        "--config", str(config), "--branch", "dev", "--env", "B=3", "--request-id", "r-1"
    )
    assert request.job_params.max_attempts == 2
    assert parse("--config", str(config), "--max-attempts", "5").job_params.max_attempts == 5
    params = request.job_params
    assert (request.queue, request.request_id) == ("priority", "r-1")
    assert (params.command, params.args, params.branch) == ("make", ["test"], "dev")
    assert params.process_type == ProcessType.PTY
    assert params.timeout_seconds == 60
    assert params.environment == {"A": "1", "B": "3"}
    assert params.repository == "https://example.com/repo.git"


def test_json_job_file(tmp_path: Path) -> None:
    config = tmp_path / "job.json"
    config.write_text(json.dumps({"command": "true", "metadata": {"team": "ci"}}))
    assert parse("--config", str(config)).job_params.metadata == {"team": "ci"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("command: [1, 2\n", r"is not valid YAML \(line 2\)"),
        ("- a list\n", "must hold a mapping"),
        ("command: x\nrepo: y\n", "unknown keys repo"),
        ("command: x\ntimeout_seconds: soon\n", "whole number of seconds"),
        ("command: x\nprocess_type: tty\n", "must be pipe or pty"),
        ("command: x\nmax_attempts: 0\n", "1 or more"),
        ("command: x\nenvironment: [A]\n", "must be a mapping"),
    ],
)
def test_bad_job_files(tmp_path: Path, content: str, message: str) -> None:
    config = tmp_path / "job.yaml"
    config.write_text(content)
    with pytest.raises(CliError, match=message):
        parse("--config", str(config))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "a command is required"),
        (["--env", "NOEQUALS", "--command", "x"], "--env takes KEY=VALUE"),
        (["/no/such/dir", "--command", "x"], "neither a URL nor a local path"),
        (["--config", "/no/such/job.yaml"], "cannot read"),
    ],
)
def test_bad_command_lines(argv: list[str], message: str) -> None:
    with pytest.raises(CliError, match=message):
        parse(*argv)


def test_a_local_repository_with_uncommitted_changes_is_pointed_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def git(*args: str) -> None:
        subprocess.run(
            ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
            cwd=tmp_path,
            check=True,
            capture_output=True,
        )

    git("init", "--quiet")
    (tmp_path / "run.sh").write_text("echo one\n")
    git("add", ".")
    git("commit", "--quiet", "-m", "one")
    parse(str(tmp_path), "--", "sh", "run.sh")
    assert capsys.readouterr().err == ""
    (tmp_path / "run.sh").write_text("echo two\n")
    (tmp_path / "new.sh").write_text("echo new\n")
    parse(str(tmp_path), "--", "sh", "run.sh")
    assert "has 2 uncommitted change(s); the job runs its last commit" in capsys.readouterr().err
    # A named commit or branch is what the user asked for.
    parse(str(tmp_path), "--branch", "main", "--", "sh", "run.sh")
    assert capsys.readouterr().err == ""


def test_secrets_from_flags_the_environment_and_the_job_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FROM_SHELL", "shell-value")
    monkeypatch.setenv("LISTED", "listed-value")
    config = tmp_path / "job.yaml"
    config.write_text("command: x\nsecrets: {IN_FILE: file-value, FROM_SHELL: ~}\n")
    request = parse("--config", str(config), "--secret", "A=a=b", "--secret", "FROM_SHELL")
    assert request.job_params.secrets == {
        "IN_FILE": "file-value",
        "FROM_SHELL": "shell-value",
        "A": "a=b",
    }
    assert request.job_params.environment == {}
    config.write_text("command: x\nsecrets: [LISTED]\n")
    assert parse("--config", str(config)).job_params.secrets == {"LISTED": "listed-value"}


@pytest.mark.parametrize(
    ("argv", "content", "message"),
    [
        (["--secret", "UNSET_HERE"], "", "environment variable UNSET_HERE is not set"),
        (["--secret", "=hidden-value"], "", "--secret takes NAME=VALUE or NAME"),
        ([], "secrets: {A: [hidden-value]}\n", "the value of A must be a string"),
        ([], "secrets: hidden-value\n", "must be a mapping of names to values, or a list"),
        ([], "secrets: [UNSET_HERE]\n", "environment variable UNSET_HERE is not set"),
    ],
)
def test_bad_secrets_never_repeat_a_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str], content: str, message: str
) -> None:
    monkeypatch.delenv("UNSET_HERE", raising=False)
    config = tmp_path / "job.yaml"
    config.write_text("command: x\n" + content)
    with pytest.raises(CliError, match=message) as raised:
        parse("--config", str(config), *argv)
    assert "hidden-value" not in str(raised.value)


def test_secret_help_says_a_name_alone_reads_the_environment(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        parse_args(["submit", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "K alone takes the value of this shell's environment variable K" in help_text
    assert "124 if it ran past its timeout; 125 if it was cancelled" in help_text
    assert "--cancel-on-interrupt" in help_text


def test_a_secret_too_short_to_redact_is_pointed_out(capsys: pytest.CaptureFixture[str]) -> None:
    parse("--secret", "PIN=123", "--secret", "TOKEN=long-enough", "--", "true")
    said = capsys.readouterr().err
    assert "secret PIN is shorter than 4 bytes: its value is not redacted" in said
    assert "TOKEN" not in said
    assert "123" not in said
