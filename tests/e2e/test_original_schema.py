"""A client generated from the first published schema drives today's server.

The schema kept in tests/fixtures/original_proto is compiled here with the
same plugins as airunner/api, into a package of its own, and a separate
Python process uses it for a job's whole life: enqueue, list, dequeue,
events, completion, replay.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import trio

from tests.e2e.conftest import run_server
from tests.helpers import ROOT, tool, tool_env

_TEMPLATE = {
    "version": "v2",
    "plugins": [
        {"local": "protoc-gen-py", "out": "."},
        {"local": "protoc-gen-connectrpc", "out": "."},
    ],
}

# Runs in its own process, with only the original schema's package importable
# besides the libraries: nothing of airunner's own generated code.
_CLIENT = r"""
import sys
from protobuf import Oneof
from job.v1.job_connect import JobEventsServiceClientSync, JobServiceClientSync
from job.v1 import job_pb as pb

url = sys.argv[1]
jobs = JobServiceClientSync(url)
events = JobEventsServiceClientSync(url)
enqueued = jobs.enqueue_job(pb.EnqueueJobRequest(
    request_id="original-1", queue="default",
    job_params=pb.JobParams(command="echo", args=["hi"], owner="old-client",
                            environment={"A": "1"})))
assert enqueued.state == pb.JobState.SCHEDULED, enqueued
listed = jobs.list_jobs(pb.ListJobsRequest(queue="default"))
assert [j.job_id for j in listed.jobs] == [enqueued.job_id], listed
assert listed.jobs[0].job_params.owner == "old-client"
[delivery] = list(jobs.dequeue_job(pb.DequeueJobRequest(queue="default", max_jobs=1)))
assert delivery.job.job_id == enqueued.job_id and delivery.job.state == pb.JobState.RUNNING
assert delivery.job.job_params.environment == {"A": "1"}
token = delivery.task_token
def published():
    yield pb.PublishJobEventsRequest(task_token=token, events=[
        pb.JobEvent(sequence=1, event_type=pb.EventType.PROCESS_START,
                    event_data=Oneof(field="process_start",
                                     value=pb.ProcessStartEvent(pid=7))),
        pb.JobEvent(sequence=2, event_type=pb.EventType.OUTPUT,
                    event_data=Oneof(field="output", value=pb.OutputEvent(output=b"hi\n"))),
        pb.JobEvent(sequence=3, event_type=pb.EventType.PROCESS_END,
                    event_data=Oneof(field="process_end",
                                     value=pb.ProcessEndEvent(pid=7, exit_code=0))),
    ])
events.publish_job_events(published())
jobs.update_job(pb.UpdateJobRequest(queue="default", task_token=token))
jobs.complete_job(pb.CompleteJobRequest(task_token=token, job_result=pb.JobResult(
    job_id=enqueued.job_id, success=True, exit_code=0)))
replayed = list(events.stream_job_events(pb.StreamJobEventsRequest(job_id=enqueued.job_id)))
assert [r.event.sequence for r in replayed] == [1, 2, 3], replayed
done = jobs.list_jobs(pb.ListJobsRequest(state=pb.JobState.COMPLETED))
assert [j.job_id for j in done.jobs] == [enqueued.job_id], done
print("ok")
"""


async def test_client_of_the_original_schema_runs_a_job(tmp_path: Path) -> None:
    generated = tmp_path / "original"
    generated.mkdir()
    await trio.run_process(
        [
            tool("buf"),
            "generate",
            "tests/fixtures/original_proto",
            "--template",
            json.dumps(_TEMPLATE),
            "--output",
            str(generated),
        ],
        cwd=ROOT,
        env=tool_env(),
    )
    assert (generated / "job" / "v1" / "job_connect.py").exists()
    script = tmp_path / "client.py"
    script.write_text(_CLIENT)
    async with run_server() as running:
        done = await trio.run_process(
            [sys.executable, str(script), running.url],
            cwd=tmp_path,
            env={**tool_env(), "PYTHONPATH": str(generated)},
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().strip() == "ok"
