"""Pools on real workers: two threads of one process sharing the loaded model store every item exactly once.
(``--concurrency 2`` against 1 on this machine's cores, the thread policy's effect, is a ratio the benchmark
measures: `bench.pools`.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.jobs import client_for, sentences, worker_env
from tests.support.records import Record
from tests.support.worker_process import worker_log
from worker.process import running_worker

pytestmark = pytest.mark.services


def test_two_threads_sharing_one_model_store_every_item_once(
    tmp_path: Path, tiny_models: dict[str, Path], migrated_postgres: str, redis_url: str, queue_name: str
) -> None:
    # Given a worker of one process whose two pool threads share the loaded model
    registry = {"cls-distilbert": {"source": str(tiny_models["cls-distilbert"]), "task": "classification"}}
    env = worker_env(migrated_postgres, redis_url, queue_name, registry, max_batch_size=16)
    log_path = tmp_path / "worker.log"
    record = Record(migrated_postgres)
    try:
        with (
            running_worker(env, log_path, "--models", "cls-distilbert", "--pool", "threads", "--concurrency", "2"),
            client_for(env) as client,
        ):
            # When two jobs of several chunks each run on it at once
            jobs = [
                client.submit("classification", "cls-distilbert", sentences(160, offset=o), chunk_size=20).job_id
                for o in (0, 500)
            ]
            statuses = [client.wait(job, timeout=180) for job in jobs]
        # Then each item has exactly one result and each job's counts are exact
        for job, status in zip(jobs, statuses, strict=True):
            assert (status.state.value, status.succeeded, status.failed) == ("succeeded", 160, 0)
            record.assert_every_item_once(job)
            assert {c.attempts for c in record.chunks(job)} == {1}
        # (the stop at the end may hand back a batch-mate's late message: a warning, not an error)
        log = worker_log(log_path)
        assert "ERROR/" not in log, log[-3000:]
    finally:
        record.close()
