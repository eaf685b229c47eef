"""The job executor: git checkout, process (pipe/PTY), event batching and publishing.

- ``Worker``: polls DequeueJob and runs jobs, up to its concurrency.
- ``JobExecutor``: one delivery: heartbeats, checkout, process, events, CompleteJob.
- ``OutputBatcher``: process output into OUTPUT_BATCH events.
- ``EventPublisher``: the PublishJobEvents stream, re-sent after failures.
"""

from __future__ import annotations

from ._batcher import BatchLimits, OutputBatcher, Sequencer
from ._checkout import CheckoutError, check_repository, checkout, resolve_working_directory
from ._executor import ExecutorSettings, JobExecutor
from ._process import OutputChunk, ProcessOutcome, SpawnError, run_command
from ._publisher import EventPublisher, PublishFailed
from ._worker import Worker, WorkerSettings

__all__ = [
    "BatchLimits",
    "CheckoutError",
    "EventPublisher",
    "ExecutorSettings",
    "JobExecutor",
    "OutputBatcher",
    "OutputChunk",
    "ProcessOutcome",
    "PublishFailed",
    "Sequencer",
    "SpawnError",
    "Worker",
    "WorkerSettings",
    "check_repository",
    "checkout",
    "resolve_working_directory",
    "run_command",
]
