"""Server configuration from the environment.

Variable names and error messages are part of the interface: operators' scripts
and deployment templates set and match them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from airunner.store import (
    DEFAULT_FINISHED_JOB_TTL_SECONDS,
    DEFAULT_MAX_FINISHED_JOBS,
    DEFAULT_MAX_FINISHED_OUTPUT_BYTES,
    DEFAULT_QUEUES,
    rules,
)

DEFAULT_LISTEN = "127.0.0.1:8080"
# DynamoDB TTL takes any future time; ten years is far past any sane retention.
MAX_EVENTS_TTL_DAYS = 3650
# A terabyte of output is no limit; at least a kilobyte, or no error message fits.
MIN_OUTPUT_BYTES = 1024
MAX_OUTPUT_BYTES = 2**40
# Beyond these the memory store is no longer bounded in any useful sense.
MAX_FINISHED_JOBS = 10_000_000
MAX_FINISHED_JOB_TTL = 366 * 24 * 3600
# A queue name: what an SQS queue name may hold (80 characters at most), less
# upper case and '_', so that each name has one AIRUNNER_SQS_QUEUE_<NAME> variable.
QUEUE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,79}")
SQS_QUEUE_PREFIX = "AIRUNNER_SQS_QUEUE_"


class ConfigError(Exception):
    """A configuration the server cannot run with. The message is one line for the operator."""


@dataclass(frozen=True)
class MemoryStoreSettings:
    queues: tuple[str, ...] = DEFAULT_QUEUES
    default_visibility_timeout: int = rules.DEFAULT_VISIBILITY_TIMEOUT_SECONDS
    token_signing_secret: bytes | None = None
    max_attempts: int = rules.DEFAULT_MAX_ATTEMPTS
    max_output_bytes: int = rules.DEFAULT_MAX_OUTPUT_BYTES
    max_finished_jobs: int = DEFAULT_MAX_FINISHED_JOBS
    finished_job_ttl: int = DEFAULT_FINISHED_JOB_TTL_SECONDS
    max_finished_output_bytes: int = DEFAULT_MAX_FINISHED_OUTPUT_BYTES


@dataclass(frozen=True)
class SQSStoreSettings:
    queue_urls: Mapping[str, str]
    jobs_table: str
    events_table: str
    default_visibility_timeout: int
    events_ttl_days: int
    token_signing_secret: bytes
    max_attempts: int = rules.DEFAULT_MAX_ATTEMPTS
    max_output_bytes: int = rules.DEFAULT_MAX_OUTPUT_BYTES


StoreSettings = MemoryStoreSettings | SQSStoreSettings


def store_settings_from_env(env: Mapping[str, str]) -> StoreSettings:
    """Read AIRUNNER_STORE_TYPE and what that store needs.

    Raises:
        ConfigError: ``unknown store type: X``, or for ``sqs`` the first missing or
            malformed variable, prefixed ``failed to create SQS store:``.
    """
    store_type = env.get("AIRUNNER_STORE_TYPE", "") or "memory"
    if store_type == "memory":
        return _memory_settings(env)
    if store_type == "sqs":
        try:
            return _sqs_settings(env)
        except ConfigError as e:
            raise ConfigError(f"failed to create SQS store: {e}") from None
    raise ConfigError(f"unknown store type: {store_type}")


def _memory_settings(env: Mapping[str, str]) -> MemoryStoreSettings:
    max_output = _max_output_bytes(env)
    finished_output = _int_env(
        env,
        "AIRUNNER_MEMORY_MAX_FINISHED_OUTPUT_BYTES",
        DEFAULT_MAX_FINISHED_OUTPUT_BYTES,
        0,
        MAX_OUTPUT_BYTES,
    )
    if finished_output < max_output:
        # Else a job with all its output would be forgotten the moment it finished.
        raise ConfigError(
            f"AIRUNNER_MEMORY_MAX_FINISHED_OUTPUT_BYTES ({finished_output}) must be at least "
            f"AIRUNNER_MAX_OUTPUT_BYTES ({max_output})"
        )
    return MemoryStoreSettings(
        queues=_queue_names(env) or DEFAULT_QUEUES,
        default_visibility_timeout=_visibility_timeout(env),
        token_signing_secret=env.get("AIRUNNER_TOKEN_SIGNING_SECRET", "").encode() or None,
        max_attempts=_max_attempts(env),
        max_output_bytes=max_output,
        max_finished_jobs=_int_env(
            env,
            "AIRUNNER_MEMORY_MAX_FINISHED_JOBS",
            DEFAULT_MAX_FINISHED_JOBS,
            1,
            MAX_FINISHED_JOBS,
        ),
        finished_job_ttl=_int_env(
            env,
            "AIRUNNER_MEMORY_FINISHED_JOB_TTL",
            DEFAULT_FINISHED_JOB_TTL_SECONDS,
            1,
            MAX_FINISHED_JOB_TTL,
        ),
        max_finished_output_bytes=finished_output,
    )


def _sqs_settings(env: Mapping[str, str]) -> SQSStoreSettings:
    queue_urls = sqs_queue_urls(env)
    if not (jobs_table := env.get("AIRUNNER_DYNAMODB_JOBS_TABLE", "")):
        raise ConfigError("AIRUNNER_DYNAMODB_JOBS_TABLE is required")
    events_table = env.get("AIRUNNER_DYNAMODB_EVENTS_TABLE", "")
    visibility = _visibility_timeout(env)
    ttl_days = _int_env(env, "AIRUNNER_EVENTS_TTL_DAYS", 0, 0, MAX_EVENTS_TTL_DAYS)
    if not (secret := env.get("AIRUNNER_TOKEN_SIGNING_SECRET", "")):
        raise ConfigError("AIRUNNER_TOKEN_SIGNING_SECRET is required")
    return SQSStoreSettings(
        queue_urls=queue_urls,
        jobs_table=jobs_table,
        events_table=events_table,
        default_visibility_timeout=visibility,
        events_ttl_days=ttl_days,
        token_signing_secret=secret.encode(),
        max_attempts=_max_attempts(env),
        max_output_bytes=_max_output_bytes(env),
    )


def queue_variable(name: str) -> str:
    """The variable that holds the SQS queue URL of queue ``name``:
    ``build-gpu`` is AIRUNNER_SQS_QUEUE_BUILD_GPU."""
    return SQS_QUEUE_PREFIX + name.upper().replace("-", "_")


def check_queue_name(name: str, source: str) -> str:
    """Check one queue name; ``source`` says where it came from, for the message.

    Raises:
        ConfigError: not 1 to 80 lower-case letters, digits or '-', starting with
            a letter or digit.
    """
    if not QUEUE_NAME.fullmatch(name):
        raise ConfigError(
            f"{source}: bad queue name {name!r}: a queue name is 1 to 80 lower-case letters, "
            "digits or '-', starting with a letter or digit"
        )
    return name


def sqs_queue_urls(env: Mapping[str, str]) -> dict[str, str]:
    """The SQS store's queues: one per AIRUNNER_SQS_QUEUE_<NAME> variable that is
    set, NAME being the queue name upper-cased with '-' as '_' (``queue_variable``).

    AIRUNNER_SQS_QUEUE_DEFAULT is required. AIRUNNER_QUEUES is not needed; if it
    is set, it must name the same queues (in any order).

    Raises:
        ConfigError: the default queue is missing, a variable's NAME is not a
            queue name's, or AIRUNNER_QUEUES disagrees.
    """
    urls = {}
    for variable, url in sorted(env.items()):
        if not variable.startswith(SQS_QUEUE_PREFIX) or not url:
            continue
        suffix = variable.removeprefix(SQS_QUEUE_PREFIX)
        name = suffix.lower().replace("_", "-")
        if not QUEUE_NAME.fullmatch(name) or queue_variable(name) != variable:
            raise ConfigError(
                f"{variable}: the part after {SQS_QUEUE_PREFIX} must be a queue name in "
                "upper case with '_' for '-' (queue build-gpu: "
                f"{queue_variable('build-gpu')}), got {suffix!r}"
            )
        urls[name] = url
    if "default" not in urls:
        raise ConfigError(f"{queue_variable('default')} is required")
    listed = _queue_names(env)
    if listed is not None and set(listed) != set(urls):
        raise ConfigError(
            f"AIRUNNER_QUEUES ({', '.join(listed)}) must name the queues that have an "
            f"{SQS_QUEUE_PREFIX}<NAME> variable ({', '.join(sorted(urls))}), or be unset"
        )
    return dict(sorted(urls.items(), key=lambda item: (item[0] != "default", item[0])))


def _queue_names(env: Mapping[str, str]) -> tuple[str, ...] | None:
    """AIRUNNER_QUEUES: comma-separated queue names, or None if unset or empty.

    Raises:
        ConfigError: a name is bad or repeated.
    """
    text = env.get("AIRUNNER_QUEUES", "").strip()
    if not text:
        return None
    names: list[str] = []
    for part in text.split(","):
        name = check_queue_name(part.strip(), "AIRUNNER_QUEUES")
        if name in names:
            raise ConfigError(f"AIRUNNER_QUEUES: queue {name!r} is named twice")
        names.append(name)
    return tuple(names)


# A month: a token that leaks is good for no longer.
DEFAULT_TOKEN_MAX_LIFETIME = 30 * 24 * 3600
# A limit above a year is no limit.
MAX_TOKEN_MAX_LIFETIME = 366 * 24 * 3600


@dataclass(frozen=True)
class TokenRules:
    """What a bearer token must be, besides signed: how long it may live, and for whom."""

    max_lifetime: int = DEFAULT_TOKEN_MAX_LIFETIME
    issuer: str | None = None
    audience: str | None = None


def token_rules_from_env(env: Mapping[str, str]) -> TokenRules:
    """AIRUNNER_TOKEN_MAX_LIFETIME (seconds), JWT_ISSUER and JWT_AUDIENCE.

    Raises:
        ConfigError: the lifetime is not a whole number of seconds in range.
    """
    return TokenRules(
        max_lifetime=_int_env(
            env,
            "AIRUNNER_TOKEN_MAX_LIFETIME",
            DEFAULT_TOKEN_MAX_LIFETIME,
            1,
            MAX_TOKEN_MAX_LIFETIME,
        ),
        issuer=env.get("JWT_ISSUER") or None,
        audience=env.get("JWT_AUDIENCE") or None,
    )


def _visibility_timeout(env: Mapping[str, str]) -> int:
    return _int_env(
        env,
        "AIRUNNER_DEFAULT_VISIBILITY_TIMEOUT",
        rules.DEFAULT_VISIBILITY_TIMEOUT_SECONDS,
        1,
        rules.MAX_VISIBILITY_TIMEOUT_SECONDS,
    )


def _max_attempts(env: Mapping[str, str]) -> int:
    return _int_env(
        env, "AIRUNNER_MAX_ATTEMPTS", rules.DEFAULT_MAX_ATTEMPTS, 1, rules.MAX_ATTEMPTS_LIMIT
    )


def _max_output_bytes(env: Mapping[str, str]) -> int:
    return _int_env(
        env,
        "AIRUNNER_MAX_OUTPUT_BYTES",
        rules.DEFAULT_MAX_OUTPUT_BYTES,
        MIN_OUTPUT_BYTES,
        MAX_OUTPUT_BYTES,
    )


def _int_env(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {text!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
    return value


def parse_listen(text: str) -> str:
    """Check a HOST:PORT listen address (``[::1]:8080`` for IPv6); return it.

    Raises:
        ConfigError: the address is not HOST:PORT with a port from 0 to 65535.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"listen address must be HOST:PORT, got {text!r}")
    return text
