"""airunner-server init-aws: the queues and tables the SQS store needs, on moto's server."""

from __future__ import annotations

import json
import shlex
import subprocess
from typing import Any

import pytest

from airunner.config import SQSStoreSettings, store_settings_from_env
from tests.helpers import clean_env, tool

pytestmark = pytest.mark.aws


def init_aws(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("airunner-server"), "init-aws", *args],
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def exports(output: str) -> dict[str, str]:
    pairs = {}
    for line in output.strip().splitlines():
        assert line.startswith("export ")
        name, _, value = line.removeprefix("export ").partition("=")
        pairs[name] = shlex.split(value)[0]
    return pairs


def test_creates_queues_and_tables_with_their_settings(
    aws_env: dict[str, str], boto: tuple[Any, Any]
) -> None:
    sqs, dynamodb = boto
    done = init_aws(aws_env, "--environment", "initcheck")
    assert done.returncode == 0, done.stderr
    settings = exports(done.stdout)
    assert settings["AIRUNNER_STORE_TYPE"] == "sqs"
    assert settings["AIRUNNER_DYNAMODB_JOBS_TABLE"] == "airunner_jobs"
    assert settings["AIRUNNER_DYNAMODB_EVENTS_TABLE"] == "airunner_job_events"

    for name in ("default", "priority"):
        url = settings[f"AIRUNNER_SQS_QUEUE_{name.upper()}"]
        assert url.endswith(f"/airunner-initcheck-{name}")
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        assert attributes["VisibilityTimeout"] == "300"
        assert attributes["ReceiveMessageWaitTimeSeconds"] == "20"
        assert attributes["MessageRetentionPeriod"] == "1209600"
        assert attributes["SqsManagedSseEnabled"] == "true"
        redrive = json.loads(attributes["RedrivePolicy"])
        assert int(redrive["maxReceiveCount"]) == 3
        assert redrive["deadLetterTargetArn"].endswith(f":airunner-initcheck-{name}-dlq")

    jobs = dynamodb.describe_table(TableName="airunner_jobs")["Table"]
    assert jobs["KeySchema"] == [{"AttributeName": "job_id", "KeyType": "HASH"}]
    assert jobs["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    indexes = {index["IndexName"]: index for index in jobs["GlobalSecondaryIndexes"]}
    assert indexes["GSI1"]["KeySchema"] == [
        {"AttributeName": "queue", "KeyType": "HASH"},
        {"AttributeName": "created_at", "KeyType": "RANGE"},
    ]
    assert indexes["GSI1"]["Projection"]["ProjectionType"] == "ALL"
    # No index on request_id: the claim item finds a request's job (docs/ARCHITECTURE.md).
    assert set(indexes) == {"GSI1"}
    types = {a["AttributeName"]: a["AttributeType"] for a in jobs["AttributeDefinitions"]}
    assert types == {"job_id": "S", "queue": "S", "created_at": "N"}

    events = dynamodb.describe_table(TableName="airunner_job_events")["Table"]
    assert events["KeySchema"] == [
        {"AttributeName": "job_id", "KeyType": "HASH"},
        {"AttributeName": "sequence", "KeyType": "RANGE"},
    ]
    ttl = dynamodb.describe_time_to_live(TableName="airunner_job_events")
    assert ttl["TimeToLiveDescription"] == {"TimeToLiveStatus": "ENABLED", "AttributeName": "ttl"}


def test_running_it_again_changes_nothing(aws_env: dict[str, str]) -> None:
    first = init_aws(aws_env, "--environment", "twice")
    second = init_aws(aws_env, "--environment", "twice")
    assert first.returncode == second.returncode == 0, second.stderr
    assert first.stdout == second.stdout


def test_unreachable_endpoint_is_one_line(aws_env: dict[str, str]) -> None:
    done = init_aws(aws_env | {"AWS_ENDPOINT_URL": "http://127.0.0.1:9"})
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("airunner-server: error: cannot create the AWS resources:")


def test_queue_makes_more_queues_each_with_its_dead_letter_queue(
    aws_env: dict[str, str], boto: tuple[Any, Any]
) -> None:
    sqs, _ = boto
    done = init_aws(
        aws_env, "--environment", "extras", "--queue", "gpu-large", "--queue", "nightly"
    )
    assert done.returncode == 0, done.stderr
    settings = exports(done.stdout)
    queues = {
        name: settings[f"AIRUNNER_SQS_QUEUE_{variable}"]
        for name, variable in [
            ("default", "DEFAULT"),
            ("priority", "PRIORITY"),
            ("gpu-large", "GPU_LARGE"),
            ("nightly", "NIGHTLY"),
        ]
    }
    assert len([name for name in settings if name.startswith("AIRUNNER_SQS_QUEUE_")]) == 4
    for name, url in queues.items():
        assert url.endswith(f"/airunner-extras-{name}")
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        assert attributes["VisibilityTimeout"] == "300"
        assert attributes["SqsManagedSseEnabled"] == "true"
        redrive = json.loads(attributes["RedrivePolicy"])
        assert int(redrive["maxReceiveCount"]) == 3
        assert redrive["deadLetterTargetArn"].endswith(f":airunner-extras-{name}-dlq")
    # The server reads exactly these queues from the printed lines.
    store = store_settings_from_env(settings | {"AIRUNNER_TOKEN_SIGNING_SECRET": "s"})
    assert isinstance(store, SQSStoreSettings)
    assert store.queue_urls == queues


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("GPU", "--queue: bad queue name 'GPU': a queue name is 1 to 80 lower-case letters"),
        # 81 characters with the environment's name and "-dlq".
        (
            "q" * 60,
            "makes the SQS queue name 'airunner-badname-" + "q" * 60 + "-dlq', longer than",
        ),
    ],
)
def test_a_bad_queue_name_is_one_line_and_makes_nothing(
    aws_env: dict[str, str], boto: tuple[Any, Any], name: str, message: str
) -> None:
    sqs, _ = boto
    done = init_aws(aws_env, "--environment", "badname", "--queue", "fine", "--queue", name)
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("airunner-server: error: ")
    assert message in line
    assert not sqs.list_queues(QueueNamePrefix="airunner-badname-").get("QueueUrls")
