from __future__ import annotations

import pytest

from airunner.config import (
    ConfigError,
    MemoryStoreSettings,
    SQSStoreSettings,
    TokenRules,
    parse_listen,
    queue_variable,
    store_settings_from_env,
    token_rules_from_env,
)

SQS = {
    "AIRUNNER_STORE_TYPE": "sqs",
    "AIRUNNER_SQS_QUEUE_DEFAULT": "http://127.0.0.1:1/q/default",
    "AIRUNNER_DYNAMODB_JOBS_TABLE": "airunner_jobs",
    "AIRUNNER_TOKEN_SIGNING_SECRET": "s3cret",
}


@pytest.mark.parametrize("value", [None, "", "memory"])
def test_memory_is_the_default(value: str | None) -> None:
    env = {} if value is None else {"AIRUNNER_STORE_TYPE": value}
    assert store_settings_from_env(env) == MemoryStoreSettings()


def test_unknown_store_type() -> None:
    with pytest.raises(ConfigError, match=r"^unknown store type: redis$"):
        store_settings_from_env({"AIRUNNER_STORE_TYPE": "redis"})


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ("AIRUNNER_SQS_QUEUE_DEFAULT", "AIRUNNER_SQS_QUEUE_DEFAULT is required"),
        ("AIRUNNER_DYNAMODB_JOBS_TABLE", "AIRUNNER_DYNAMODB_JOBS_TABLE is required"),
        ("AIRUNNER_TOKEN_SIGNING_SECRET", "AIRUNNER_TOKEN_SIGNING_SECRET is required"),
    ],
)
def test_sqs_requires_its_variables(missing: str, message: str) -> None:
    env = {k: v for k, v in SQS.items() if k != missing}
    with pytest.raises(ConfigError, match=f"^failed to create SQS store: {message}$"):
        store_settings_from_env(env)


def test_sqs_reports_missing_variables_in_a_fixed_order() -> None:
    with pytest.raises(ConfigError, match="AIRUNNER_SQS_QUEUE_DEFAULT is required"):
        store_settings_from_env({"AIRUNNER_STORE_TYPE": "sqs"})
    with pytest.raises(ConfigError, match="AIRUNNER_DYNAMODB_JOBS_TABLE is required"):
        store_settings_from_env({"AIRUNNER_STORE_TYPE": "sqs", "AIRUNNER_SQS_QUEUE_DEFAULT": "u"})


def test_sqs_settings_with_defaults_and_options() -> None:
    settings = store_settings_from_env(SQS)
    assert settings == SQSStoreSettings(
        queue_urls={"default": SQS["AIRUNNER_SQS_QUEUE_DEFAULT"]},
        jobs_table="airunner_jobs",
        events_table="",
        default_visibility_timeout=300,
        events_ttl_days=0,
        token_signing_secret=b"s3cret",
    )
    settings = store_settings_from_env(
        SQS
        | {
            "AIRUNNER_SQS_QUEUE_PRIORITY": "http://127.0.0.1:1/q/priority",
            "AIRUNNER_DYNAMODB_EVENTS_TABLE": "airunner_job_events",
            "AIRUNNER_DEFAULT_VISIBILITY_TIMEOUT": "60",
            "AIRUNNER_EVENTS_TTL_DAYS": "30",
            "AIRUNNER_MAX_OUTPUT_BYTES": "1048576",
        }
    )
    assert isinstance(settings, SQSStoreSettings)
    assert settings.max_output_bytes == 1048576
    assert settings.queue_urls["priority"] == "http://127.0.0.1:1/q/priority"
    assert settings.events_table == "airunner_job_events"
    assert (settings.default_visibility_timeout, settings.events_ttl_days) == (60, 30)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("AIRUNNER_DEFAULT_VISIBILITY_TIMEOUT", "5m", "must be a whole number, got '5m'"),
        ("AIRUNNER_DEFAULT_VISIBILITY_TIMEOUT", "0", "must be between 1 and 43200"),
        ("AIRUNNER_DEFAULT_VISIBILITY_TIMEOUT", "50000", "must be between 1 and 43200"),
        ("AIRUNNER_EVENTS_TTL_DAYS", "-1", "must be between 0 and 3650"),
        ("AIRUNNER_EVENTS_TTL_DAYS", "thirty", "must be a whole number"),
        ("AIRUNNER_MAX_OUTPUT_BYTES", "100", "must be between 1024 and 1099511627776"),
        ("AIRUNNER_MAX_OUTPUT_BYTES", "32MiB", "must be a whole number"),
    ],
)
def test_malformed_numbers_are_errors_not_defaults(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"{name} {message}"):
        store_settings_from_env(SQS | {name: value})


def test_memory_store_reads_visibility_and_secret() -> None:
    settings = store_settings_from_env(
        {"AIRUNNER_DEFAULT_VISIBILITY_TIMEOUT": "42", "AIRUNNER_TOKEN_SIGNING_SECRET": "k"}
    )
    assert settings == MemoryStoreSettings(
        default_visibility_timeout=42, token_signing_secret=b"k"
    )
    with pytest.raises(ConfigError, match="whole number"):
        store_settings_from_env({"AIRUNNER_DEFAULT_VISIBILITY_TIMEOUT": "x"})


def test_memory_store_bounds_default_to_a_day_a_thousand_jobs_and_256_mib() -> None:
    settings = store_settings_from_env({})
    assert isinstance(settings, MemoryStoreSettings)
    assert settings.max_output_bytes == 32 * 1024 * 1024
    assert settings.max_finished_jobs == 1000
    assert settings.finished_job_ttl == 86400
    assert settings.max_finished_output_bytes == 256 * 1024 * 1024
    settings = store_settings_from_env(
        {
            "AIRUNNER_MAX_OUTPUT_BYTES": "4096",
            "AIRUNNER_MEMORY_MAX_FINISHED_JOBS": "10",
            "AIRUNNER_MEMORY_FINISHED_JOB_TTL": "60",
            "AIRUNNER_MEMORY_MAX_FINISHED_OUTPUT_BYTES": "8192",
        }
    )
    assert settings == MemoryStoreSettings(
        max_output_bytes=4096,
        max_finished_jobs=10,
        finished_job_ttl=60,
        max_finished_output_bytes=8192,
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"AIRUNNER_MEMORY_MAX_FINISHED_JOBS": "0"}, "must be between 1 and 10000000, got 0"),
        ({"AIRUNNER_MEMORY_FINISHED_JOB_TTL": "1d"}, "must be a whole number, got '1d'"),
        (
            {"AIRUNNER_MEMORY_MAX_FINISHED_OUTPUT_BYTES": "1024"},
            r"AIRUNNER_MEMORY_MAX_FINISHED_OUTPUT_BYTES \(1024\) must be at least "
            r"AIRUNNER_MAX_OUTPUT_BYTES \(33554432\)",
        ),
    ],
)
def test_memory_store_bounds_must_be_sane(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        store_settings_from_env(env)


@pytest.mark.parametrize("text", ["127.0.0.1:8080", "0.0.0.0:0", "[::1]:9000", "localhost:1"])
def test_listen_addresses(text: str) -> None:
    assert parse_listen(text) == text


@pytest.mark.parametrize("text", ["8080", ":8080", "host:", "host:http", "host:70000"])
def test_bad_listen_addresses(text: str) -> None:
    with pytest.raises(ConfigError, match="HOST:PORT"):
        parse_listen(text)


def test_token_rules_default_to_a_month_and_no_issuer_or_audience() -> None:
    assert token_rules_from_env({}) == TokenRules(30 * 24 * 3600, None, None)
    rules = token_rules_from_env(
        {"AIRUNNER_TOKEN_MAX_LIFETIME": "3600", "JWT_ISSUER": "me", "JWT_AUDIENCE": "ci"}
    )
    assert rules == TokenRules(3600, "me", "ci")


@pytest.mark.parametrize("value", ["0", "soon", str(400 * 24 * 3600)])
def test_token_lifetime_must_be_sane(value: str) -> None:
    with pytest.raises(ConfigError, match="AIRUNNER_TOKEN_MAX_LIFETIME must be"):
        token_rules_from_env({"AIRUNNER_TOKEN_MAX_LIFETIME": value})


# Queue sets.


@pytest.mark.parametrize(
    ("value", "queues"),
    [
        ("default", ("default",)),
        ("priority,default,builds", ("priority", "default", "builds")),
        (" builds , gpu-large ", ("builds", "gpu-large")),
        ("0nightly," + "q" * 80, ("0nightly", "q" * 80)),
        ("", ("default", "priority")),
    ],
)
def test_memory_store_serves_the_queues_airunner_queues_names(
    value: str, queues: tuple[str, ...]
) -> None:
    settings = store_settings_from_env({"AIRUNNER_QUEUES": value})
    assert isinstance(settings, MemoryStoreSettings)
    assert settings.queues == queues


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("default,,priority", "bad queue name ''"),
        ("default,", "bad queue name ''"),
        ("Default", "bad queue name 'Default'"),
        ("my_queue", "bad queue name 'my_queue'"),
        ("-x", "bad queue name '-x'"),
        ("a b", "bad queue name 'a b'"),
        ("q" * 81, "bad queue name 'q{81}'"),
        ("default,builds,default", "queue 'default' is named twice"),
    ],
)
def test_bad_airunner_queues_stop_the_server_naming_the_variable(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^AIRUNNER_QUEUES: {message}"):
        store_settings_from_env({"AIRUNNER_QUEUES": value})


def test_sqs_serves_a_queue_per_airunner_sqs_queue_variable() -> None:
    settings = store_settings_from_env(
        SQS
        | {
            "AIRUNNER_SQS_QUEUE_PRIORITY": "http://127.0.0.1:1/q/priority",
            "AIRUNNER_SQS_QUEUE_GPU_LARGE": "http://127.0.0.1:1/q/gpu",
            "AIRUNNER_SQS_QUEUE_NIGHTLY2": "http://127.0.0.1:1/q/nightly",
            # Empty is as if unset, as for the other variables.
            "AIRUNNER_SQS_QUEUE_UNUSED": "",
        }
    )
    assert isinstance(settings, SQSStoreSettings)
    assert settings.queue_urls == {
        "default": "http://127.0.0.1:1/q/default",
        "gpu-large": "http://127.0.0.1:1/q/gpu",
        "nightly2": "http://127.0.0.1:1/q/nightly",
        "priority": "http://127.0.0.1:1/q/priority",
    }


@pytest.mark.parametrize("name", ["default", "priority", "gpu-large", "a-b-c", "0nightly"])
def test_a_queue_name_and_its_variable_map_both_ways(name: str) -> None:
    variable = queue_variable(name)
    assert variable.startswith("AIRUNNER_SQS_QUEUE_")
    settings = store_settings_from_env(SQS | {variable: "http://127.0.0.1:1/q/x"})
    assert isinstance(settings, SQSStoreSettings)
    assert name in settings.queue_urls


@pytest.mark.parametrize(
    "variable",
    [
        "AIRUNNER_SQS_QUEUE_gpu",
        "AIRUNNER_SQS_QUEUE_GPU-LARGE",
        "AIRUNNER_SQS_QUEUE_",
        "AIRUNNER_SQS_QUEUE__GPU",
        "AIRUNNER_SQS_QUEUE_" + "Q" * 81,
    ],
)
def test_an_airunner_sqs_queue_variable_must_name_a_queue(variable: str) -> None:
    with pytest.raises(
        ConfigError,
        match=f"^failed to create SQS store: {variable}: the part after AIRUNNER_SQS_QUEUE_ "
        "must be a queue name in upper case with '_' for '-' "
        r"\(queue build-gpu: AIRUNNER_SQS_QUEUE_BUILD_GPU\)",
    ):
        store_settings_from_env(SQS | {variable: "http://127.0.0.1:1/q/x"})


def test_airunner_queues_in_sqs_mode_is_optional_but_must_agree() -> None:
    env = SQS | {"AIRUNNER_SQS_QUEUE_BUILDS": "http://127.0.0.1:1/q/builds"}
    for listed in ("builds,default", "default, builds", ""):
        settings = store_settings_from_env(env | {"AIRUNNER_QUEUES": listed})
        assert isinstance(settings, SQSStoreSettings)
        assert set(settings.queue_urls) == {"default", "builds"}
    for listed in ("default", "default,builds,priority"):
        with pytest.raises(
            ConfigError,
            match=rf"^failed to create SQS store: AIRUNNER_QUEUES \({listed.replace(',', ', ')}\) "
            r"must name the queues that have an AIRUNNER_SQS_QUEUE_<NAME> variable "
            r"\(builds, default\), or be unset$",
        ):
            store_settings_from_env(env | {"AIRUNNER_QUEUES": listed})
    with pytest.raises(ConfigError, match="AIRUNNER_QUEUES: bad queue name 'Builds'"):
        store_settings_from_env(env | {"AIRUNNER_QUEUES": "Builds,default"})
