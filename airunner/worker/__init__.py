"""The job executor: git checkout, process (pipe/PTY), event batching and publishing.

- ``Worker``: polls DequeueJob and runs jobs, up to its concurrency.
- ``JobExecutor``: one delivery: heartbeats, checkout, process, events, CompleteJob.
- ``OutputBatcher``: process output into OUTPUT_BATCH events.
- ``Redactor``: a job's secret values hidden in its output, however it is cut.
- ``EventPublisher``: the PublishJobEvents stream, re-sent after failures.
- ``OrphanReaper``: ends and reaps what a job leaves running outside its group.
- ``JobUser``: the user a root worker runs jobs as.
"""

from __future__ import annotations

from ._batcher import BatchLimits, OutputBatcher, Sequencer
from ._checkout import CheckoutError, check_repository, checkout, resolve_working_directory
from ._executor import CANCEL_CHECK_SECONDS, KILLED_REPORT_SECONDS, ExecutorSettings, JobExecutor
from ._isolation import (
    WORKER_SECRETS,
    JobUser,
    JobUserError,
    become_subreaper,
    give_tree,
    make_undumpable,
)
from ._orphans import JOB_ID_VARIABLE, OrphanReaper, TrackedJob
from ._process import KILL_GRACE_SECONDS, OutputChunk, ProcessOutcome, SpawnError, run_command
from ._publisher import EventPublisher, PublishFailed
from ._redact import MIN_SECRET_BYTES, Redactor
from ._worker import PollRefused, Worker, WorkerSettings

__all__ = [
    "CANCEL_CHECK_SECONDS",
    "JOB_ID_VARIABLE",
    "KILLED_REPORT_SECONDS",
    "KILL_GRACE_SECONDS",
    "MIN_SECRET_BYTES",
    "WORKER_SECRETS",
    "BatchLimits",
    "CheckoutError",
    "EventPublisher",
    "ExecutorSettings",
    "JobExecutor",
    "JobUser",
    "JobUserError",
    "OrphanReaper",
    "OutputBatcher",
    "OutputChunk",
    "PollRefused",
    "ProcessOutcome",
    "PublishFailed",
    "Redactor",
    "Sequencer",
    "SpawnError",
    "TrackedJob",
    "Worker",
    "WorkerSettings",
    "become_subreaper",
    "check_repository",
    "checkout",
    "give_tree",
    "make_undumpable",
    "resolve_working_directory",
    "run_command",
]
