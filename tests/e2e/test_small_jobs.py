"""Many small jobs on real components: one-item jobs of one model run in shared batches in a real ``inferq worker``
(two pool processes, so that batch-mates' own messages arrive while their batch runs and are deferred), each job
ends with its own result equal to the pipeline's, and every message is finished."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.reference import assert_same_labels, classification_reference
from tests.support.jobs import client_for, sentences, worker_env
from tests.support.worker_process import worker_log
from worker.process import running_worker

pytestmark = pytest.mark.services

JOBS = 80


def test_one_item_jobs_share_batches_and_each_gets_the_pipelines_result(
    tmp_path: Path,
    tiny_models: dict[str, Path],
    migrated_postgres: str,
    redis_url: str,
    queue_name: str,
) -> None:
    # Given 80 one-item jobs submitted before any worker runs
    registry = {"cls-roberta": {"source": str(tiny_models["cls-roberta"]), "task": "classification"}}
    # Every job's message sent at submit (``direct``), all on the broker before the worker starts: the test counts
    # one delivered message per job (under the dispatcher, tests/faults/test_fair_share.py covers batch-mates)
    env = worker_env(migrated_postgres, redis_url, queue_name, registry, coalesce_items=32, dispatch="direct")
    inputs = sentences(JOBS, offset=700)
    with client_for(env) as client:
        jobs = [client.submit("classification", "cls-roberta", [row], params={"top_k": 2}).job_id for row in inputs]

        # When a worker of two pool processes starts on them
        log_path = tmp_path / "worker.log"
        with running_worker(env, log_path, "--models", "cls-roberta", "--concurrency", "2"):
            statuses = [client.wait(job_id, timeout=300) for job_id in jobs]
            # Every message ends: run, or found done (a deferred one comes back after its countdown)
            deadline = time.monotonic() + 120
            while len(set(re.findall(r"run_chunk\[([0-9a-f-]+)\] succeeded", worker_log(log_path)))) < JOBS:
                assert time.monotonic() < deadline, worker_log(log_path)[-5000:]
                time.sleep(0.5)
        results = {job_id: list(client.results(job_id)) for job_id in jobs}

    # Then the jobs ran in batches of up to 32 items, not one forward each
    log = worker_log(log_path)
    batches = [int(n) for n in re.findall(r"in one batch with (\d+) chunks of other jobs", log)]
    assert batches and max(batches) == 31 and sum(batches) + len(batches) <= JOBS, log[-5000:]
    assert "Traceback" not in log.replace("Reject", ""), log[-5000:]
    # And each job succeeded on its own with the pipeline's result
    reference = classification_reference(tiny_models["cls-roberta"], inputs, top_k=2)
    for job_id, status, want in zip(jobs, statuses, reference, strict=True):
        assert (status.state.value, status.succeeded, status.failed) == ("succeeded", 1, 0)
        [row] = results[job_id]
        assert row.status == "succeeded" and row.result is not None
        assert_same_labels(row.result, want, where=job_id)
