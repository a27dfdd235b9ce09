"""Issue 5, point 1 (and 10): a worker SIGKILLed mid-chunk. The chunk runs again in another worker process, every
item ends with exactly one result, and the items of the killed chunk count two attempts. On Redis and RabbitMQ.

Two kills: a pool process (the main process sees it die and hands the message back at once:
``task_reject_on_worker_lost``), and a whole worker, main process included, so that nobody hands anything back:
RabbitMQ requeues the messages of a dropped connection, and on Redis the chunk's lease expires and the other
worker's reconciler re-enqueues it."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.support.jobs import client_for, pid_of, sentences, worker_env
from tests.support.records import Record, wait_for
from worker.process import running_worker, running_workers

pytestmark = pytest.mark.services

#: Items per chunk: a couple of seconds of the slow model, so that a kill lands mid-chunk.
CHUNK = 300


def test_a_pool_process_killed_mid_chunk_hands_its_chunk_to_another(
    tmp_path: Path, fault_env: dict[str, str], record: Record
) -> None:
    # Given a worker of two pool processes and a job of three chunks
    with (
        running_worker(fault_env, tmp_path / "worker.log", "--models", "slow", "--concurrency", "2"),
        client_for(fault_env) as client,
    ):
        job_id = client.submit("classification", "slow", sentences(3 * CHUNK), chunk_size=CHUNK).job_id

        # When the pool process computing the first chunk to start is SIGKILLed mid-chunk
        victim = wait_for(lambda: record.running_chunk(job_id), 60, "a chunk to start")
        os.kill(pid_of(victim.worker), signal.SIGKILL)
        status = client.wait(job_id, timeout=120)

    # Then the job succeeded with every item exactly once
    assert status.state.value == "succeeded"
    items = record.assert_every_item_once(job_id)
    # And the killed chunk ran again in another process; its items count two attempts, the others one
    chunk = record.chunks(job_id)[victim.seq]
    assert chunk.attempts == 2 and chunk.worker != victim.worker
    for item in items:
        assert item.attempts == (2 if chunk.start <= item.index < chunk.stop else 1), item.index


def test_a_whole_worker_killed_mid_chunk_is_recovered_by_the_others(
    tmp_path: Path,
    migrated_postgres: str,
    broker_url: str,
    queue_name: str,
    fault_registry: dict[str, Any],
    record: Record,
) -> None:
    # Given two workers with short leases and their reconcilers on, and a job of three chunks
    env = worker_env(migrated_postgres, broker_url, queue_name, fault_registry, lease_seconds=10, recover_interval=2)
    with (
        running_workers(env, [tmp_path / "a.log", tmp_path / "b.log"], "--models", "slow") as (a, b),
        client_for(env) as client,
    ):
        job_id = client.submit("classification", "slow", sentences(3 * CHUNK), chunk_size=CHUNK).job_id

        # When the worker computing the first chunk to start is SIGKILLed whole (main process and pool), so that
        # nobody is left to hand its message back: RabbitMQ sees the connection drop, Redis sees nothing at all
        victim = wait_for(lambda: record.running_chunk(job_id), 60, "a chunk to start")
        dead = os.getpgid(pid_of(victim.worker))  # each worker runs in a process group of its own
        assert dead in (a.pid, b.pid)
        os.killpg(dead, signal.SIGKILL)
        status = client.wait(job_id, timeout=120)
        finisher = os.getpgid(pid_of(record.chunks(job_id)[victim.seq].worker))

    # Then the job succeeded with every item exactly once, the killed chunk finished by the surviving worker
    assert status.state.value == "succeeded"
    items = record.assert_every_item_once(job_id)
    chunk = record.chunks(job_id)[victim.seq]
    assert chunk.attempts == 2 and finisher != dead
    assert all(i.attempts == 2 for i in items if chunk.start <= i.index < chunk.stop)
