"""Issue 5, point 3: Redis restarted empty mid-job (no persistence: every queued and unacknowledged message is
gone). `inferq recover` re-enqueues the lost chunks, decided from SQL and what Redis still holds; the reconciler in
every worker does the same without a human. The job completes, each item once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.brokers import PrivateRedis, ready_messages
from tests.support.jobs import client_for, inferq_cli, sentences, worker_env
from tests.support.records import Record, wait_for
from tests.support.worker_process import worker_log
from worker.process import running_worker

pytestmark = pytest.mark.services

CHUNK = 150
CHUNKS = 6


@pytest.fixture
def migrated_postgres(own_postgres: str) -> str:
    """This module's tests on a database of their own: `inferq recover` and the reconciler act on every job of their
    database, and what earlier tests left there (a cancelled job's queued chunks) would be re-enqueued too."""
    return own_postgres


def stall_after_a_redis_restart(record: Record, redis_server: PrivateRedis, job_id: str) -> int:
    """Once the job has a chunk done and one running, restart Redis empty; return how many chunks are left
    queued with their messages gone once the running one has finished."""
    wait_for(
        lambda: record.job(job_id).succeeded >= CHUNK and record.running_chunk(job_id),
        60,
        "a chunk done and another running",
    )
    redis_server.restart_empty()
    wait_for(lambda: record.running_chunk(job_id) is None, 60, "the running chunk to end")
    return sum(c.state == "queued" for c in record.chunks(job_id))


def test_after_redis_restarts_empty_inferq_recover_completes_the_job(
    tmp_path: Path,
    redis_server: PrivateRedis,
    redis_env: dict[str, str],
    queue_name: str,
    record: Record,
) -> None:
    # Given a worker (its reconciler off) computing a job of six chunks
    env = redis_env
    with running_worker(env, tmp_path / "worker.log", "--models", "slow"), client_for(env) as client:
        job_id = client.submit("classification", "slow", sentences(CHUNKS * CHUNK), chunk_size=CHUNK).job_id

        # When Redis restarts empty mid-job, the job stalls: its queued chunks have no message any more
        lost = stall_after_a_redis_restart(record, redis_server, job_id)
        assert lost > 0
        # (once the worker has reconnected to the new, empty Redis and consumes from it again, nothing comes)
        log = tmp_path / "worker.log"
        wait_for(lambda: worker_log(log).count("Connected to redis") >= 2, 60, "the worker to reconnect to Redis")
        assert record.job(job_id).state == "running" and record.running_chunk(job_id) is None
        assert ready_messages(redis_server.url, queue_name) == 0

        # And the operator runs `inferq recover`
        done = inferq_cli(env, "recover", "--older-than", "0", "--json")
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)

        # Then exactly the lost chunks were re-enqueued, because their messages were missing
        assert report["broker_listed"] is True
        assert len(report["requeued"]) == lost
        assert {c["reason"] for c in report["requeued"]} == {"message_missing"}
        # And a second run finds nothing to do
        again = json.loads(inferq_cli(env, "recover", "--older-than", "0", "--json").stdout)
        assert again["requeued"] == []
        status = client.wait(job_id, timeout=120)

    # And the job completed, every item exactly once, no chunk run twice
    assert status.state.value == "succeeded"
    record.assert_every_item_once(job_id)
    assert all(c.attempts == 1 for c in record.chunks(job_id))
    assert "Connection to broker lost" in worker_log(tmp_path / "worker.log")


def test_after_redis_restarts_empty_the_reconciler_completes_the_job_alone(
    tmp_path: Path,
    migrated_postgres: str,
    redis_server: PrivateRedis,
    queue_name: str,
    fault_registry: dict[str, Any],
    record: Record,
) -> None:
    # Given a worker whose reconciler runs every second, computing a job of six chunks
    env = worker_env(
        migrated_postgres, redis_server.url, queue_name, fault_registry, recover_interval=1, recover_older_than=1
    )
    with running_worker(env, tmp_path / "worker.log", "--models", "slow"), client_for(env) as client:
        job_id = client.submit("classification", "slow", sentences(CHUNKS * CHUNK), chunk_size=CHUNK).job_id

        # When Redis restarts empty mid-job, and nobody does anything
        stall_after_a_redis_restart(record, redis_server, job_id)
        status = client.wait(job_id, timeout=120)

    # Then the job completed, every item exactly once, no chunk run twice
    assert status.state.value == "succeeded"
    record.assert_every_item_once(job_id)
    assert all(c.attempts == 1 for c in record.chunks(job_id))
    log = worker_log(tmp_path / "worker.log")
    assert "(message_missing)" in log and "re-enqueued" in log
    # And no stray copy is left behind on the broker (the reconciler does not flood it)
    assert ready_messages(redis_server.url, queue_name) == 0
