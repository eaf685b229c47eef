"""Chaos: jobs on real workers and servers while workers are SIGKILLed and SIGSTOPped
(and, with the sqs store, a replica is SIGKILLed and restarted), then every delivery
promise checked. The harness, and what it checks, is bench/chaos.py's, at a size for
the suite: 30 jobs of 1-3 s, 4 workers (--visibility-timeout 4 --concurrency 2), a
busy worker SIGKILLed about every 3 s, one SIGSTOPped for 7 s.

``CHAOS_SEED`` picks another fault schedule (default 7). On failure the summary names
the work dir: run files, each job's event log, the faults and every process's log.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from bench.chaos import Plan, run_chaos

pytestmark = pytest.mark.e2e

JOBS = 30


@pytest.mark.parametrize("store", ["memory", pytest.param("sqs", marks=pytest.mark.aws)])
async def test_jobs_keep_their_promises_under_chaos(
    store: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    aws_env = request.getfixturevalue("aws_env") if store == "sqs" else None
    plan = Plan(
        store=store,
        jobs=JOBS,
        workers=4,
        concurrency=2,
        visibility=4,
        kill_every=3.0,
        stop_seconds=7.0,
        seed=int(os.environ.get("CHAOS_SEED", "7")),
        # Usually about 20 s. In sqs mode a dead letter taken by the killed replica's
        # last long poll (which SQS finishes) stays hidden for the dead-letter
        # reader's 15 s hold: its job fails up to 35 s after its last run.
        final_within=90.0,
    )
    with trio.fail_after(180):
        report = await run_chaos(plan, tmp_path, aws_env=aws_env)
    print(report.summary())
    assert report.ok, report.summary()
    assert report.completed + report.failed == JOBS
    # The faults happened and cost runs; at this kill rate most jobs still complete.
    assert report.kills >= 2
    assert report.stops == 1
    assert report.replica_restarts == (1 if store == "sqs" else 0)
    assert report.lost_runs >= 1, report.summary()
    assert report.completed > report.failed, report.summary()
