"""Fixtures of the AWS tests."""

from __future__ import annotations

import uuid

import pytest

from .test_init_aws import exports, init_aws


@pytest.fixture
def sqs_env(aws_env: dict[str, str]) -> dict[str, str]:
    name = f"mode-{uuid.uuid4().hex[:8]}"
    done = init_aws(
        aws_env,
        "--environment",
        name,
        "--jobs-table",
        f"jobs-{name}",
        "--events-table",
        f"events-{name}",
    )
    assert done.returncode == 0, done.stderr
    return aws_env | exports(done.stdout) | {"AIRUNNER_TOKEN_SIGNING_SECRET": "secret"}
