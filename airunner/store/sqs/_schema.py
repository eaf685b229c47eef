"""The data model of the SQS store, whole: its messages, tables, keys, indexes and items.

A job's SQS message has the body ``{"job_id", "queue", "request_id"}``: it only
says "look at this job". A job has one message at a time, whose id the job
item holds; another message naming the job is a stray and is deleted.

Jobs table, key ``job_id`` (S). Two kinds of item share it:

- a **job**: ``job_id``, ``queue`` (S), ``state`` (N, a JobState), ``job_params``
  (M, the JobParams as JSON), ``request_id`` (S), ``created_at`` and
  ``updated_at`` (N, Unix ms), ``execution_config`` (B, protobuf),
  ``max_attempts`` (N, runs it may have), ``message_id`` (S, its message),
  ``attempt`` (N, deliveries so far; the current task token names it), and once
  delivered ``receipt_handle`` (S, of the current delivery's receive),
  ``visible_until`` (N, Unix ms), ``visibility`` (N, seconds the dequeuer asked
  for), ``sequence_base`` (N, the last sequence earlier deliveries stored),
  ``taken_up`` (N, the last delivery a worker took up), ``runs`` (N, deliveries
  taken up), ``message_runs`` (N, runs on the current message, which has been
  received once more than that unless a receive was wasted), ``output_bytes``
  (N) and ``output_truncated_at`` (N) as the job's last event said when the
  current delivery began (the output its earlier runs stored; the output cap
  goes on counting from there), ``worker`` (S, the name its last dequeuer
  gave), ``started_at`` (N, Unix ms, when the last delivery was taken up),
  once CancelJob asked ``cancel_requested`` (BOOL, true) and ``cancel_reason``
  (S), and once final ``finished_at`` (N, Unix ms), ``result`` (S, the
  JobResult as JSON; none for a job cancelled before it ran) and, if a
  worker's CompleteJob recorded it, ``completed_by`` (N, that delivery's
  attempt). Items written before an attribute existed read as if it were
  unset (a final one's ``finished_at`` as its ``updated_at``);
- a **claim** of a request id: key ``request#<request_id>``, ``target_job_id``
  (S), ``created_at``. Written in one transaction with its job under
  ``attribute_not_exists``, it makes EnqueueJob idempotent under races.

One index: GSI1 (``queue``, ``created_at``; all attributes) lists a queue's
jobs newest first; claims have no ``queue``, so it holds jobs only. There is no
index on ``request_id``: the claim finds a request's job with one consistent
GetItem, which an index (eventually consistent) could not.

Events table, keys ``job_id`` (S) and ``sequence`` (N): ``timestamp`` (N, Unix
ms), ``event_type`` (N), ``event_payload`` (B, the whole JobEvent as stored,
protobuf), ``output_bytes`` (N, the job's output bytes stored up to this event,
as its writer counted them), ``output_truncated_at`` (N, the sequence of the
job's OUTPUT_TRUNCATED event, on events written after it), and ``ttl`` (N, Unix
seconds) when events expire.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from protobuf.wkt import Timestamp

from airunner.api.job.v1.job_pb import (
    ExecutionConfig,
    Job,
    JobEvent,
    JobParams,
    JobResult,
    JobState,
)
from airunner.store import FINAL_STATES, event_time_ms, rules
from airunner.store.rules import OutputLedger

DEFAULT_JOBS_TABLE = "airunner_jobs"
DEFAULT_EVENTS_TABLE = "airunner_job_events"
JOBS_BY_QUEUE_INDEX = "GSI1"
EVENTS_TTL_ATTRIBUTE = "ttl"
EVENTS_KEY = ("job_id", "sequence")
# Keys of the claim items, in the jobs table; no job id (a UUID) starts so.
CLAIM_PREFIX = "request#"


def jobs_table_definition(name: str) -> dict[str, Any]:
    """CreateTable's arguments for the jobs table."""
    return {
        "TableName": name,
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [
            {"AttributeName": "job_id", "AttributeType": "S"},
            {"AttributeName": "queue", "AttributeType": "S"},
            {"AttributeName": "created_at", "AttributeType": "N"},
        ],
        "KeySchema": [{"AttributeName": "job_id", "KeyType": "HASH"}],
        "GlobalSecondaryIndexes": [
            {
                "IndexName": JOBS_BY_QUEUE_INDEX,
                "KeySchema": [
                    {"AttributeName": "queue", "KeyType": "HASH"},
                    {"AttributeName": "created_at", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            },
        ],
    }


def events_table_definition(name: str) -> dict[str, Any]:
    """CreateTable's arguments for the events table (TTL is set apart)."""
    return {
        "TableName": name,
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [
            {"AttributeName": "job_id", "AttributeType": "S"},
            {"AttributeName": "sequence", "AttributeType": "N"},
        ],
        "KeySchema": [
            {"AttributeName": "job_id", "KeyType": "HASH"},
            {"AttributeName": "sequence", "KeyType": "RANGE"},
        ],
    }


# Job items.


def job_key(job_id: str) -> dict[str, Any]:
    return {"job_id": {"S": job_id}}


def is_claim_key(job_id: str) -> bool:
    return job_id.startswith(CLAIM_PREFIX)


def claim_item(request_id: str, job_id: str, now_ms: int) -> dict[str, Any]:
    return {
        "job_id": {"S": CLAIM_PREFIX + request_id},
        "target_job_id": {"S": job_id},
        "created_at": {"N": str(now_ms)},
    }


def claim_key(request_id: str) -> str:
    return CLAIM_PREFIX + request_id


def claimed_job_id(claim: Mapping[str, Any]) -> str:
    return str(claim["target_job_id"]["S"])


def job_item(
    job: Job, queue: str, request_id: str, *, message_id: str, max_attempts: int
) -> dict[str, Any]:
    """A new job's item."""
    params = job.job_params or JobParams()
    config = job.execution_config or ExecutionConfig()
    return {
        "job_id": {"S": job.job_id},
        "queue": {"S": queue},
        "state": {"N": str(int(job.state))},
        "job_params": _attribute(json.loads(params.to_json())),
        "request_id": {"S": request_id},
        "created_at": {"N": str(ms(job.created_at))},
        "updated_at": {"N": str(ms(job.updated_at))},
        "execution_config": {"B": config.to_binary()},
        "max_attempts": {"N": str(max_attempts)},
        "message_id": {"S": message_id},
        "attempt": {"N": "0"},
        "runs": {"N": "0"},
        "message_runs": {"N": "0"},
    }


def job_from_item(item: Mapping[str, Any], now_ms: int) -> Job:
    """The job an item holds, as a reader sees it at ``now_ms``."""
    config = item.get("execution_config")
    state = visible_state(item, now_ms)
    job = Job(
        job_id=item["job_id"]["S"],
        job_params=JobParams.from_json(json.dumps(_value(item["job_params"]))),
        state=state,
        created_at=timestamp(int(item["created_at"]["N"])),
        updated_at=timestamp(int(item["updated_at"]["N"])),
        execution_config=ExecutionConfig.from_binary(bytes(config["B"])) if config else None,
        queue=queue_of(item),
        attempt=runs_of(item),
        worker=str(item.get("worker", {}).get("S", "")),
        started_at=timestamp(_number(item, "started_at")) if "started_at" in item else None,
        cancel_requested=cancel_requested(item),
        cancel_reason=cancel_reason_of(item),
    )
    if state in FINAL_STATES:
        stored = result_json(item)
        result = JobResult.from_json(stored) if stored else None
        rules.record_end(job, state, result, job.cancel_reason)
        if is_final(item):
            job.finished_at = timestamp(_number(item, "finished_at", ms(job.updated_at)))
        else:
            # Cancelled, its delivery over: it ended then, though the item says
            # so only once its message is next received.
            job.finished_at = timestamp(visible_until(item))
    return job


def stored_state(item: Mapping[str, Any]) -> JobState:
    return JobState(int(item["state"]["N"]))


def visible_state(item: Mapping[str, Any], now_ms: int) -> JobState:
    """The state a reader sees: a RUNNING job whose delivery expired is SCHEDULED
    again, as its SQS message is visible again; CANCELLED if its cancel was
    requested (it never runs again, and its message's next receive ends it)."""
    state = stored_state(item)
    if state in FINAL_STATES or is_live(item, now_ms):
        return state
    if cancel_requested(item):
        return JobState.CANCELLED
    if state == JobState.RUNNING:
        return JobState.SCHEDULED
    return state


def is_final(item: Mapping[str, Any]) -> bool:
    return stored_state(item) in FINAL_STATES


def job_id_of(item: Mapping[str, Any]) -> str:
    return str(item["job_id"]["S"])


def queue_of(item: Mapping[str, Any]) -> str:
    return str(item["queue"]["S"])


def attempt_of(item: Mapping[str, Any]) -> int:
    return int(item.get("attempt", {"N": "0"})["N"])


def visible_until(item: Mapping[str, Any]) -> int:
    return int(item.get("visible_until", {"N": "0"})["N"])


def sequence_base(item: Mapping[str, Any]) -> int:
    return int(item.get("sequence_base", {"N": "0"})["N"])


def _number(item: Mapping[str, Any], name: str, default: int = 0) -> int:
    return int(item[name]["N"]) if name in item else default


def runs_of(item: Mapping[str, Any]) -> int:
    return _number(item, "runs")


def message_runs_of(item: Mapping[str, Any]) -> int:
    return _number(item, "message_runs")


def max_attempts_of(item: Mapping[str, Any], default: int) -> int:
    return _number(item, "max_attempts", default)


def completed_by(item: Mapping[str, Any]) -> int:
    """The delivery whose CompleteJob recorded the result (0: the store did)."""
    return _number(item, "completed_by")


def visibility_of(item: Mapping[str, Any]) -> int:
    return _number(item, "visibility")


def taken_up(item: Mapping[str, Any]) -> bool:
    """Whether a worker took the last delivery up (it is, or was, a run)."""
    return attempt_of(item) > 0 and _number(item, "taken_up") == attempt_of(item)


def is_live(item: Mapping[str, Any], now_ms: int) -> bool:
    """Whether a delivery holds the job now."""
    return stored_state(item) == JobState.RUNNING and visible_until(item) > now_ms


def cancel_requested(item: Mapping[str, Any]) -> bool:
    """Whether CancelJob asked for the job to stop."""
    return bool(item.get("cancel_requested", {}).get("BOOL", False))


def cancel_reason_of(item: Mapping[str, Any]) -> str:
    return str(item.get("cancel_reason", {}).get("S", ""))


def message_id_of(item: Mapping[str, Any]) -> str:
    return str(item.get("message_id", {}).get("S", ""))


def receipt_of(item: Mapping[str, Any]) -> str:
    return str(item.get("receipt_handle", {}).get("S", ""))


def request_id_of(item: Mapping[str, Any]) -> str:
    return str(item.get("request_id", {}).get("S", ""))


def result_json(item: Mapping[str, Any]) -> str | None:
    return str(item["result"]["S"]) if "result" in item else None


def output_ledger(item: Mapping[str, Any]) -> OutputLedger:
    """The output a job item or an event item says the job had stored."""
    truncated_at = item.get("output_truncated_at")
    return OutputLedger(
        stored_bytes=_number(item, "output_bytes"),
        truncated_at=int(truncated_at["N"]) if truncated_at is not None else None,
    )


def output_attributes(ledger: OutputLedger) -> dict[str, Any]:
    """The attributes that record ``ledger`` on an item."""
    attributes: dict[str, Any] = {"output_bytes": {"N": str(ledger.stored_bytes)}}
    if ledger.truncated_at is not None:
        attributes["output_truncated_at"] = {"N": str(ledger.truncated_at)}
    return attributes


# Event items.


def event_item(
    job_id: str, event: JobEvent, expires_at: int | None, output: OutputLedger
) -> dict[str, Any]:
    """An event's item; ``expires_at`` (Unix seconds) sets its TTL, ``output`` is
    the job's stored output as of this event."""
    item: dict[str, Any] = {
        "job_id": {"S": job_id},
        "sequence": {"N": str(event.sequence)},
        "timestamp": {"N": str(event_time_ms(event))},
        "event_type": {"N": str(int(event.event_type))},
        "event_payload": {"B": event.to_binary()},
        **output_attributes(output),
    }
    if expires_at is not None:
        item[EVENTS_TTL_ATTRIBUTE] = {"N": str(expires_at)}
    return item


def event_from_item(item: Mapping[str, Any]) -> JobEvent:
    return JobEvent.from_binary(bytes(item["event_payload"]["B"]))


def sequence_of(item: Mapping[str, Any]) -> int:
    return int(item["sequence"]["N"])


# Messages.


def message_body(job_id: str, queue: str, request_id: str) -> str:
    return json.dumps({"job_id": job_id, "queue": queue, "request_id": request_id})


def parse_message_body(text: str) -> tuple[str, str] | None:
    """The job id and request id a message names; None if it names no job."""
    try:
        body = json.loads(text)
        job_id, request_id = body["job_id"], body.get("request_id", "")
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    if not isinstance(job_id, str) or not job_id or is_claim_key(job_id):
        return None
    return job_id, request_id if isinstance(request_id, str) else ""


@dataclass(frozen=True)
class RedrivePolicy:
    """Where a queue moves a message received too often, and after how many receives."""

    max_receive_count: int
    queue_name: str
    account: str


def redrive_policy(attributes: Mapping[str, str]) -> RedrivePolicy | None:
    """A queue's redrive policy, from its attributes; None if it has none."""
    text = attributes.get("RedrivePolicy")
    if not text:
        return None
    policy = json.loads(text)
    # arn:aws:sqs:REGION:ACCOUNT:NAME
    arn = str(policy["deadLetterTargetArn"]).split(":")
    return RedrivePolicy(int(policy["maxReceiveCount"]), queue_name=arn[5], account=arn[4])


# Values.


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def timestamp(at_ms: int) -> Timestamp:
    return Timestamp.from_nanos(at_ms * 1_000_000)


def ms(value: Timestamp | None) -> int:
    return value.to_nanos() // 1_000_000 if value is not None else 0


def _attribute(value: Any) -> dict[str, Any]:
    """A JSON value as a DynamoDB attribute value."""
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, (int, float)):
        return {"N": str(value)}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, list):
        return {"L": [_attribute(v) for v in value]}
    if isinstance(value, dict):
        return {"M": {k: _attribute(v) for k, v in value.items()}}
    return {"NULL": True}


def _value(attribute: Mapping[str, Any]) -> Any:
    """A DynamoDB attribute value as a JSON value."""
    ((kind, value),) = attribute.items()
    if kind == "N":
        number = float(value)
        return int(number) if number.is_integer() else number
    if kind == "L":
        return [_value(v) for v in value]
    if kind == "M":
        return {k: _value(v) for k, v in value.items()}
    if kind == "NULL":
        return None
    return value
