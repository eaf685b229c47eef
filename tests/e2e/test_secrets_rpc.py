"""A job's secret values are in no RPC answer but the delivery to its worker.

Every answer is checked as the bytes a client receives, in Connect's JSON
and binary forms alike, so no field (known today or added later) can carry
a value out.
"""

from __future__ import annotations

import pytest
from connectrpc.protocol import ProtocolType

from airunner.api.job.v1.job_pb import (
    CancelJobRequest,
    DequeueJobRequest,
    EnqueueJobRequest,
    GetJobRequest,
    ListJobsRequest,
    RetryJobRequest,
)
from tests.helpers import params, request_id

from .conftest import Clients, RunningServer

pytestmark = pytest.mark.e2e

VALUE = "s3cr3t-value-for-rpc"


def _holds_value(message: object) -> bool:
    return VALUE.encode() in message.to_binary() or VALUE in message.to_json()  # type: ignore[attr-defined]


@pytest.mark.parametrize("protocol", [ProtocolType.CONNECT, ProtocolType.GRPC_WEB])
async def test_secret_values_leave_the_server_only_with_the_delivery(
    running: RunningServer, protocol: ProtocolType
) -> None:
    clients = Clients(running.url, protocol=protocol)
    try:
        secrets = {"API_KEY": VALUE, "OTHER": VALUE + "-2"}
        answers: list[object] = []
        enqueued = await clients.call(
            clients.jobs.enqueue_job,
            EnqueueJobRequest(
                request_id=request_id(),
                queue="default",
                job_params=params("true", owner="o", secrets=secrets),
            ),
        )
        answers.append(enqueued)
        got = await clients.call(clients.jobs.get_job, GetJobRequest(job_id=enqueued.job_id))
        answers.append(got)
        assert got.job.secret_names == ["API_KEY", "OTHER"]
        assert got.job.job_params.secrets == {}
        answers.append(await clients.call(clients.jobs.list_jobs, ListJobsRequest()))
        answers.append(
            await clients.call(clients.jobs.list_jobs, ListJobsRequest(queue="default", owner="o"))
        )
        retried = await clients.call(
            clients.jobs.retry_job,
            RetryJobRequest(job_id=enqueued.job_id, request_id=request_id()),
        )
        answers.append(retried)
        assert retried.job.secret_names == ["API_KEY", "OTHER"]
        answers.append(
            await clients.call(
                clients.jobs.cancel_job, CancelJobRequest(job_id=enqueued.job_id, reason="r")
            )
        )
        leaked = [type(answer).__name__ for answer in answers if _holds_value(answer)]
        assert leaked == []
        # The worker gets them, and only it: the retry kept them.
        [delivery] = await clients.collect(
            clients.jobs.dequeue_job, DequeueJobRequest(queue="default", worker_name="w")
        )
        assert delivery.job.job_id == retried.job.job_id
        assert delivery.job.job_params.metadata["airunner.retry_of"] == enqueued.job_id
        assert delivery.job.job_params.secrets == secrets
    finally:
        clients.close()
