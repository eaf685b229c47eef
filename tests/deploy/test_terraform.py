"""deploy/terraform: the resources and settings the server needs, checked on the parsed module."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.terraform import MODULE, Module, decode, load
from tests.helpers import ROOT

pytestmark = pytest.mark.deploy

QUEUES = ("default", "default_dlq", "priority", "priority_dlq")
# One of each per name in var.extra_queues.
EXTRA_QUEUES = ("extra", "extra_dlq")
SQS_ACTIONS = {
    "sqs:ReceiveMessage",
    "sqs:SendMessage",
    "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibility",
    "sqs:GetQueueAttributes",
}
DYNAMODB_ACTIONS = {
    "dynamodb:PutItem",
    "dynamodb:GetItem",
    "dynamodb:UpdateItem",
    "dynamodb:Query",
    "dynamodb:Scan",
    "dynamodb:BatchWriteItem",
}
# Calls that IAM authorizes as another action.
IAM_ACTION_OF = {
    "sqs:ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility",
    "sqs:DeleteMessageBatch": "sqs:DeleteMessage",
    "sqs:SendMessageBatch": "sqs:SendMessage",
    "dynamodb:TransactWriteItems": "dynamodb:PutItem",
}


@pytest.fixture(scope="module")
def module() -> Module:
    return load()


def _ref(resource: str) -> str:
    return "${" + resource + "}"


# Phase 1.


def test_random_provider_is_required(module: Module) -> None:
    (providers,) = module.terraform[0]["required_providers"]
    assert providers["random"] == {"source": "hashicorp/random", "version": "~> 3.6"}
    assert providers["aws"]["source"] == "hashicorp/aws"


def test_four_queues_with_their_names_and_settings(module: Module) -> None:
    assert set(module.of_type("aws_sqs_queue")) == {*QUEUES, *EXTRA_QUEUES}
    assert module.resolve("${local.name}") == "airunner-${var.environment}"
    for name in QUEUES:
        queue = module.resource("aws_sqs_queue", name)
        assert module.resolve(queue["name"]) == "airunner-${var.environment}-" + name.replace(
            "_", "-"
        )
        assert module.resolve(queue["visibility_timeout_seconds"]) == 300
        assert module.resolve(queue["receive_wait_time_seconds"]) == 20
        assert module.resolve(queue["message_retention_seconds"]) == 1209600
        assert queue["sqs_managed_sse_enabled"] is True


@pytest.mark.parametrize("name", ["default", "priority"])
def test_each_queue_sends_to_its_dead_letter_queue_after_max_attempts_receives(
    module: Module, name: str
) -> None:
    redrive = decode(module.resource("aws_sqs_queue", name)["redrive_policy"])
    assert redrive["deadLetterTargetArn"] == _ref(f"aws_sqs_queue.{name}_dlq.arn")
    # The queues' limit is the jobs' attempt limit (3 by default).
    assert module.resolve(redrive["maxReceiveCount"]) == _ref("var.max_attempts")
    assert module.variables["max_attempts"]["default"] == 3
    assert "redrive_policy" not in module.resource("aws_sqs_queue", f"{name}_dlq")


def test_extra_queues_are_made_like_the_default_queue_each_with_its_dead_letter_queue(
    module: Module,
) -> None:
    variable = module.variables["extra_queues"]
    assert variable["type"] == "${list(string)}"
    assert variable["default"] == []
    for name, like in (("extra", "default"), ("extra_dlq", "default_dlq")):
        queue = module.resource("aws_sqs_queue", name)
        assert queue["for_each"] == "${toset(var.extra_queues)}"
        default = module.resource("aws_sqs_queue", like)
        settings = {"for_each", "name", "redrive_policy"}
        assert {k: v for k, v in queue.items() if k not in settings} == {
            k: v for k, v in default.items() if k not in settings
        }
    assert module.resolve(module.resource("aws_sqs_queue", "extra")["name"]) == (
        "airunner-${var.environment}-${each.key}"
    )
    assert module.resolve(module.resource("aws_sqs_queue", "extra_dlq")["name"]) == (
        "airunner-${var.environment}-${each.key}-dlq"
    )
    redrive = decode(module.resource("aws_sqs_queue", "extra")["redrive_policy"])
    assert redrive["deadLetterTargetArn"] == _ref("aws_sqs_queue.extra_dlq[each.key].arn")
    assert module.resolve(redrive["maxReceiveCount"]) == _ref("var.max_attempts")
    assert "redrive_policy" not in module.resource("aws_sqs_queue", "extra_dlq")


def _terraform_regex(condition: str) -> str:
    found = re.search(r'regex\("(?P<pattern>[^"]+)", name\)', condition)
    assert found, condition
    return found["pattern"]


@pytest.mark.parametrize(
    ("name", "accepted"),
    [
        ("builds", True),
        ("gpu-large", True),
        ("0nightly", True),
        ("q" * 46, True),
        # airunner-{20-character environment}-{name}-dlq would pass SQS's 80.
        ("q" * 47, False),
        ("Builds", False),
        ("my_queue", False),
        ("-x", False),
        ("", False),
    ],
)
def test_extra_queue_names_are_the_servers_queue_names(
    module: Module, name: str, accepted: bool
) -> None:
    from airunner.config import QUEUE_NAME

    names, others = module.variables["extra_queues"]["validation"]
    pattern = _terraform_regex(names["condition"])
    assert bool(re.fullmatch(pattern, name)) == accepted
    if accepted:
        assert QUEUE_NAME.fullmatch(name)
        longest = f"airunner-{'e' * 20}-{name}-dlq"
        assert len(longest) <= 80
    # Names once each, and never the two queues the module always makes.
    assert "distinct(var.extra_queues)" in others["condition"]
    for always in ("default", "priority"):
        assert f'!contains(var.extra_queues, "{always}")' in others["condition"]


@pytest.mark.parametrize("name", ["builds", "gpu-large", "a-b-c"])
def test_extra_queues_reach_the_server_as_its_queue_variables(module: Module, name: str) -> None:
    from airunner.config import queue_variable, sqs_queue_urls

    environment = module.locals["extra_queue_environment"]
    template = (
        "${[for name, queue in aws_sqs_queue.extra : "
        '{name = "AIRUNNER_SQS_QUEUE_${upper(replace(name, "-", "_"))}", value = queue.url}]}'
    )
    assert environment == template
    # What Terraform's upper(replace(name, "-", "_")) makes of the name...
    variable = "AIRUNNER_SQS_QUEUE_" + name.replace("-", "_").upper()
    # ...is the server's variable for that queue, and the server reads it so.
    assert variable == queue_variable(name)
    urls = sqs_queue_urls({"AIRUNNER_SQS_QUEUE_DEFAULT": "u0", variable: "u1"})
    assert urls == {"default": "u0", name: "u1"}


def _attributes(table: dict[str, Any]) -> dict[str, str]:
    return {a["name"]: a["type"] for a in table["attribute"]}


def test_jobs_table_has_its_keys_and_index(module: Module) -> None:
    table = module.resource("aws_dynamodb_table", "jobs")
    assert table["name"] == "airunner_jobs${var.dynamodb_table_suffix}"
    assert module.variables["dynamodb_table_suffix"]["default"] == ""
    assert table["billing_mode"] == "PAY_PER_REQUEST"
    assert table["hash_key"] == "job_id"
    assert "range_key" not in table
    assert _attributes(table) == {
        "job_id": "S",
        "queue": "S",
        "created_at": "N",
    }
    indexes = {index["name"]: index for index in table["global_secondary_index"]}
    assert indexes == {
        "GSI1": {
            "name": "GSI1",
            "hash_key": "queue",
            "range_key": "created_at",
            "projection_type": "ALL",
        },
    }


def test_events_table_has_job_and_sequence_keys_and_ttl(module: Module) -> None:
    table = module.resource("aws_dynamodb_table", "job_events")
    assert table["name"] == "airunner_job_events${var.dynamodb_table_suffix}"
    assert table["billing_mode"] == "PAY_PER_REQUEST"
    assert (table["hash_key"], table["range_key"]) == ("job_id", "sequence")
    assert _attributes(table) == {"job_id": "S", "sequence": "N"}
    assert table["ttl"] == [{"attribute_name": "ttl", "enabled": True}]


def test_table_and_index_names_are_the_ones_the_store_uses(module: Module) -> None:
    from airunner.store import sqs

    assert sqs.DEFAULT_JOBS_TABLE == "airunner_jobs"
    assert sqs.DEFAULT_EVENTS_TABLE == "airunner_job_events"
    indexes = {
        i["name"] for i in module.resource("aws_dynamodb_table", "jobs")["global_secondary_index"]
    }
    assert sqs.JOBS_BY_QUEUE_INDEX in indexes


def test_ssm_parameters_are_secure_strings(module: Module) -> None:
    parameters = module.of_type("aws_ssm_parameter")
    assert set(parameters) == {
        "token_signing_secret",
        "otel_exporter_endpoint",
        "otel_exporter_headers",
        "jwt_public_key",
        "jwt_private_key",
    }
    for body in parameters.values():
        assert body["type"] == "SecureString"
        assert module.resolve(body["name"]).startswith("/airunner/${var.environment}/")


def test_token_secret_is_a_random_32_byte_value(module: Module) -> None:
    password = module.resource("random_password", "token_signing_secret")
    assert password["length"] == 32
    secret = module.resource("aws_ssm_parameter", "token_signing_secret")
    assert secret["value"] == _ref("random_password.token_signing_secret.result")
    assert "count" not in secret


def test_otel_parameters_exist_only_when_their_variables_are_set(module: Module) -> None:
    endpoint = module.resource("aws_ssm_parameter", "otel_exporter_endpoint")
    headers = module.resource("aws_ssm_parameter", "otel_exporter_headers")
    assert endpoint["count"] == '${var.otel_exporter_endpoint != "" ? 1 : 0}'
    # A sensitive value cannot decide a count; whether it is empty can.
    assert headers["count"] == '${nonsensitive(var.otel_exporter_headers != "") ? 1 : 0}'
    assert endpoint["value"] == _ref("var.otel_exporter_endpoint")
    assert headers["value"] == _ref("var.otel_exporter_headers")
    assert module.variables["otel_exporter_endpoint"]["default"] == ""
    assert module.variables["otel_exporter_headers"]["default"] == ""
    assert module.variables["otel_exporter_headers"]["sensitive"] is True
    assert "sensitive" not in module.variables["otel_exporter_endpoint"]


def test_outputs_name_every_queue_table_and_parameter(module: Module) -> None:
    outputs = module.outputs
    for kind in ("urls", "arns"):
        value = outputs[f"sqs_queue_{kind}"]["value"]
        attribute = "url" if kind == "urls" else "arn"
        fixed = ", ".join(f"{name} = aws_sqs_queue.{name}.{attribute}" for name in QUEUES)
        assert value == (
            f"${{merge({{{fixed}}}, "
            f"{{for name, queue in aws_sqs_queue.extra : name => queue.{attribute}}}, "
            "{for name, queue in aws_sqs_queue.extra_dlq : "
            f'"${{name}}_dlq" => queue.{attribute}}})}}'
        )
    assert outputs["sqs_queue_environment"]["value"] == (
        "${merge({AIRUNNER_SQS_QUEUE_DEFAULT = aws_sqs_queue.default.url, "
        "AIRUNNER_SQS_QUEUE_PRIORITY = aws_sqs_queue.priority.url}, "
        "{for entry in local.extra_queue_environment : entry.name => entry.value})}"
    )
    assert outputs["dynamodb_jobs_table_name"]["value"] == _ref("aws_dynamodb_table.jobs.name")
    assert outputs["dynamodb_jobs_table_arn"]["value"] == _ref("aws_dynamodb_table.jobs.arn")
    assert outputs["dynamodb_events_table_name"]["value"] == _ref(
        "aws_dynamodb_table.job_events.name"
    )
    assert outputs["dynamodb_events_table_arn"]["value"] == _ref(
        "aws_dynamodb_table.job_events.arn"
    )
    assert outputs["ssm_token_signing_secret_arn"]["value"] == _ref(
        "aws_ssm_parameter.token_signing_secret.arn"
    )
    for name in ("otel_exporter_endpoint", "otel_exporter_headers"):
        assert outputs[f"ssm_{name}_arn"]["value"] == _ref(f"one(aws_ssm_parameter.{name}[*].arn)")
    # What the deployment workflow (deploy/terraform/README.md) reads.
    for name in ("ecs_cluster_name", "ecs_service_name", "service_url", "log_group_name"):
        assert name in outputs


# Phase 2.


def _statements(module: Module, policy: str) -> dict[str, dict[str, Any]]:
    document = decode(module.resource("aws_iam_role_policy", policy)["policy"])
    assert document["Version"] == "2012-10-17"
    return {statement["Sid"]: statement for statement in document["Statement"]}


def test_task_role_may_use_the_queues_and_tables(module: Module) -> None:
    policy = module.resource("aws_iam_role_policy", "task_sqs_dynamodb")
    assert policy["role"] == _ref("aws_iam_role.task.name")
    statements = _statements(module, "task_sqs_dynamodb")
    assert set(statements) == {"AllowSQSOperations", "AllowDynamoDBOperations"}
    sqs, dynamodb = statements["AllowSQSOperations"], statements["AllowDynamoDBOperations"]
    assert sqs["Effect"] == dynamodb["Effect"] == "Allow"
    # GetQueueUrl: the start-up check finds the dead-letter queues.
    assert set(sqs["Action"]) == SQS_ACTIONS | {"sqs:GetQueueUrl"}
    fixed = ", ".join(f"aws_sqs_queue.{name}.arn" for name in QUEUES)
    assert sqs["Resource"] == (
        f"${{concat([{fixed}], "
        "[for queue in aws_sqs_queue.extra : queue.arn], "
        "[for queue in aws_sqs_queue.extra_dlq : queue.arn])}"
    )
    assert set(dynamodb["Action"]) == DYNAMODB_ACTIONS | {
        "dynamodb:BatchGetItem",
        "dynamodb:DescribeTable",
    }
    assert set(dynamodb["Resource"]) == {
        _ref("aws_dynamodb_table.jobs.arn"),
        _ref("aws_dynamodb_table.jobs.arn") + "/index/*",
        _ref("aws_dynamodb_table.job_events.arn"),
    }


def _client_calls() -> set[str]:
    """The AWS operations airunner's server code calls, as ``service:Operation``.

    ``init-aws`` (``_resources.py``) runs with the operator's credentials, not the task's.
    """
    calls: set[str] = set()
    for path in (ROOT / "airunner").rglob("*.py"):
        if path.name == "_resources.py" or "api" in path.relative_to(ROOT).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            owner = node.func.value
            owner_name = (
                owner.attr
                if isinstance(owner, ast.Attribute)
                else owner.id
                if isinstance(owner, ast.Name)
                else ""
            )
            service = owner_name.strip("_")
            if service not in ("sqs", "dynamodb"):
                continue
            method = node.func.attr
            if method == "get_paginator":
                assert isinstance(node.args[0], ast.Constant)
                method = str(node.args[0].value)
            calls.add(f"{service}:" + "".join(part.title() for part in method.split("_")))
    return calls


def test_task_role_allows_exactly_what_the_server_calls(module: Module) -> None:
    calls = _client_calls()
    # The scan finds the calls it should: a few that every path makes.
    assert {
        "sqs:ReceiveMessage",
        "dynamodb:BatchWriteItem",
        "dynamodb:TransactWriteItems",
    } <= calls
    needed = {IAM_ACTION_OF.get(call, call) for call in calls}
    statements = _statements(module, "task_sqs_dynamodb")
    allowed = {action for statement in statements.values() for action in statement["Action"]}
    assert needed - allowed == set(), "called but not allowed"
    assert allowed - needed == set(), "allowed but never called"


def test_execution_role_reads_exactly_the_parameters_the_task_gets(module: Module) -> None:
    policy = module.resource("aws_iam_role_policy", "execution_ssm")
    assert policy["role"] == _ref("aws_iam_role.execution.name")
    (statement,) = _statements(module, "execution_ssm").values()
    assert statement["Action"] == ["ssm:GetParameters"]
    readable = statement["Resource"]
    assert readable == (
        "${concat([aws_ssm_parameter.jwt_public_key.arn, "
        "aws_ssm_parameter.token_signing_secret.arn], "
        "aws_ssm_parameter.otel_exporter_endpoint[*].arn, "
        "aws_ssm_parameter.otel_exporter_headers[*].arn)}"
    )
    secrets = module.locals["task_secrets"]
    for parameter in re.findall(r"aws_ssm_parameter\.(\w+)", readable):
        assert f"aws_ssm_parameter.{parameter}" in secrets
    for parameter in re.findall(r"aws_ssm_parameter\.(\w+)", secrets):
        assert f"aws_ssm_parameter.{parameter}" in readable
    # The signing key stays out of the task's reach.
    assert "jwt_private_key" not in readable + secrets
    attachment = module.resource("aws_iam_role_policy_attachment", "execution")
    assert attachment["policy_arn"].endswith("service-role/AmazonECSTaskExecutionRolePolicy")


def test_task_definition_environment_is_the_servers(module: Module) -> None:
    environment = {e["name"]: e["value"] for e in module.locals["task_environment"]}
    assert environment == {
        "AIRUNNER_STORE_TYPE": "sqs",
        "AIRUNNER_SQS_QUEUE_DEFAULT": _ref("aws_sqs_queue.default.url"),
        "AIRUNNER_SQS_QUEUE_PRIORITY": _ref("aws_sqs_queue.priority.url"),
        "AIRUNNER_DYNAMODB_JOBS_TABLE": _ref("aws_dynamodb_table.jobs.name"),
        "AIRUNNER_DYNAMODB_EVENTS_TABLE": _ref("aws_dynamodb_table.job_events.name"),
        "AIRUNNER_DEFAULT_VISIBILITY_TIMEOUT": "300",
        "AIRUNNER_EVENTS_TTL_DAYS": _ref("tostring(var.events_ttl_days)"),
        "AIRUNNER_MAX_ATTEMPTS": _ref("tostring(var.max_attempts)"),
        "AWS_REGION": _ref("var.aws_region"),
        "OTEL_SERVICE_NAME": "airunner-server",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=${var.environment}",
    }
    assert module.variables["events_ttl_days"]["default"] == 30
    assert module.variables["max_attempts"]["default"] == 3
    # Every AIRUNNER_ variable is one the server reads.
    from airunner.config import queue_variable

    config = (ROOT / "airunner" / "config.py").read_text()
    for name in environment:
        if name in (queue_variable("default"), queue_variable("priority")):
            assert 'SQS_QUEUE_PREFIX = "AIRUNNER_SQS_QUEUE_"' in config
        elif name.startswith("AIRUNNER_"):
            assert f'"{name}"' in config, name


def test_task_definition_secrets_are_the_token_the_key_and_otel_when_created(
    module: Module,
) -> None:
    secrets = module.locals["task_secrets"]
    assert secrets == (
        "${concat(["
        '{name = "JWT_PUBLIC_KEY", valueFrom = aws_ssm_parameter.jwt_public_key.arn}, '
        '{name = "AIRUNNER_TOKEN_SIGNING_SECRET", '
        "valueFrom = aws_ssm_parameter.token_signing_secret.arn}], "
        "[for p in aws_ssm_parameter.otel_exporter_endpoint : "
        '{name = "OTEL_EXPORTER_OTLP_ENDPOINT", valueFrom = p.arn}], '
        "[for p in aws_ssm_parameter.otel_exporter_headers : "
        '{name = "OTEL_EXPORTER_OTLP_HEADERS", valueFrom = p.arn}])}'
    )


def test_task_definition_runs_the_server_with_both_roles(module: Module) -> None:
    task = module.resource("aws_ecs_task_definition", "server")
    assert task["task_role_arn"] == _ref("aws_iam_role.task.arn")
    assert task["execution_role_arn"] == _ref("aws_iam_role.execution.arn")
    assert task["requires_compatibilities"] == ["FARGATE"]
    (container,) = decode(task["container_definitions"])
    assert container["environment"] == _ref(
        "concat(local.task_environment, local.extra_queue_environment)"
    )
    assert container["secrets"] == _ref("local.task_secrets")
    assert module.resolve(" ".join(container["command"])) == (
        "airunner-server rpc-server --listen 0.0.0.0:8080"
    )
    assert "/health" in " ".join(container["healthCheck"]["command"])
    # ECS waits this long after SIGTERM; the server's drain fits inside it.
    assert container["stopTimeout"] == 30
    assert container["logConfiguration"]["logDriver"] == "awslogs"
    assert task["depends_on"] == [
        "${aws_sqs_queue.default}",
        "${aws_dynamodb_table.jobs}",
        "${aws_iam_role_policy.task_sqs_dynamodb}",
    ]


# What the module needs to exist.


def test_load_balancer_checks_health_and_outlasts_long_polls(module: Module) -> None:
    group = module.resource("aws_lb_target_group", "server")
    (check,) = group["health_check"]
    assert check["path"] == "/health"
    assert check["matcher"] == "200"
    assert group["target_type"] == "ip"
    lb = module.resource("aws_lb", "main")
    assert lb["idle_timeout"] == _ref("var.lb_idle_timeout")
    # A 20 s long poll, and a quiet job's event stream, must not be cut.
    assert module.variables["lb_idle_timeout"]["default"] >= 600
    service = module.resource("aws_ecs_service", "server")
    (balanced,) = service["load_balancer"]
    assert balanced["target_group_arn"] == _ref("aws_lb_target_group.server.arn")
    (network,) = service["network_configuration"]
    assert network["assign_public_ip"] is False
    assert service["deployment_circuit_breaker"] == [{"enable": True, "rollback": True}]


def test_https_with_a_domain_and_a_redirect_from_http(module: Module) -> None:
    assert module.resolve("${local.https}") == '${var.domain_name != ""}'
    https = module.resource("aws_lb_listener", "https")
    assert https["count"] == "${local.https ? 1 : 0}"
    assert https["protocol"] == "HTTPS"
    assert https["ssl_policy"].startswith("ELBSecurityPolicy-TLS13")
    (action,) = module.resource("aws_lb_listener", "http")["default_action"]
    assert action["type"] == '${local.https ? "redirect" : "forward"}'
    assert module.resource("aws_acm_certificate", "api")["validation_method"] == "DNS"
    assert module.variables["domain_name"]["default"] == ""


def test_network_is_created_or_taken_from_variables(module: Module) -> None:
    assert module.resolve("${local.create_vpc}") == '${var.vpc_id == ""}'
    for kind in ("aws_vpc", "aws_nat_gateway", "aws_internet_gateway", "aws_vpc_endpoint"):
        for body in module.of_type(kind).values():
            assert body["count"] == "${local.create_vpc ? 1 : 0}", kind
    endpoint = module.resource("aws_vpc_endpoint", "dynamodb")
    assert endpoint["vpc_endpoint_type"] == "Gateway"
    (network,) = module.resource("aws_ecs_service", "server")["network_configuration"]
    assert network["subnets"] == _ref("local.private_subnet_ids")


def test_logs_go_to_cloudwatch(module: Module) -> None:
    group = module.resource("aws_cloudwatch_log_group", "server")
    assert group["retention_in_days"] == _ref("var.log_retention_days")
    task = module.resource("aws_ecs_task_definition", "server")
    (container,) = decode(task["container_definitions"])
    options = container["logConfiguration"]["options"]
    assert options["awslogs-group"] == _ref("aws_cloudwatch_log_group.server.name")


def test_every_variable_is_described_and_used(module: Module) -> None:
    text = "\n".join(body for name, body in module.files.items() if name != "variables.tf")
    for name, variable in module.variables.items():
        assert variable.get("description"), name
        assert f"var.{name}" in text, f"variable {name} is never used"


# Static analysis.


def _checkov() -> str:
    own = ROOT / ".venv-checkov" / "bin" / "checkov"
    if own.exists():
        return str(own)
    pytest.fail("checkov is not installed: ./scripts/test installs it into .venv-checkov")


def test_checkov_finds_nothing_but_the_listed_exceptions(tmp_path: Path) -> None:
    skips = yaml.safe_load((MODULE / "checkov-skips.yaml").read_text())
    for check, reason in skips.items():
        assert isinstance(reason, str), check
        assert len(reason) > 40, f"{check} needs a reason"
    result = subprocess.run(
        [_checkov(), "--skip-download", "--quiet", "--compact", "-o", "json", "-d", str(MODULE)],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ | {"HOME": str(tmp_path)},
        check=False,
    )
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    assert [r["check_type"] for r in reports] == ["terraform"]
    (terraform,) = reports
    assert terraform["summary"]["parsing_errors"] == 0
    assert terraform["summary"]["passed"] > 50
    failed = {(c["check_id"], c["resource"]) for c in terraform["results"]["failed_checks"]}
    unlisted = sorted(f"{check} on {resource}" for check, resource in failed if check not in skips)
    assert unlisted == [], "checkov findings without an entry in checkov-skips.yaml"
    stale = sorted(set(skips) - {check for check, _ in failed})
    assert stale == [], "checkov-skips.yaml entries that no longer fire"
