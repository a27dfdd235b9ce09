"""Issue 5, point 1 (and 10): a worker SIGKILLed mid-chunk. The chunk runs again in another worker process, every
item ends with exactly one result, and the items of the killed chunk count two attempts. On Redis and RabbitMQ.

Two kills: a pool process (the main process sees it die and hands the message back at once:
``task_reject_on_worker_lost``), and a whole worker, main process included, so that nobody hands anything back:
RabbitMQ requeues the messages of a dropped connection, and on Redis the chunk's lease expires and the other
worker's reconciler re-enqueues it."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from inferq import constants
from tests.faults.conftest import EnvFor
from tests.support.brokers import PrivateRedis
from tests.support.jobs import client_for, pid_of, sentences, worker_env
from tests.support.records import Record, wait_for
from worker.process import running_worker, running_workers

pytestmark = [pytest.mark.services, pytest.mark.slow]

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
        victim = wait_for(lambda: record.running_chunk(job_id), 120, "a chunk to start")
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
    tmp_path: Path, env_for: EnvFor, record: Record
) -> None:
    # Given two workers with short leases and their reconcilers on, and a job of three chunks
    env = env_for(lease_seconds=10, recover_interval=2)
    with (
        running_workers(env, [tmp_path / "a.log", tmp_path / "b.log"], "--models", "slow") as (a, b),
        client_for(env) as client,
    ):
        job_id = client.submit("classification", "slow", sentences(3 * CHUNK), chunk_size=CHUNK).job_id

        # When the worker computing the first chunk to start is SIGKILLed whole (main process and pool), so that
        # nobody is left to hand its message back: RabbitMQ sees the connection drop, Redis sees nothing at all
        victim = wait_for(lambda: record.running_chunk(job_id), 120, "a chunk to start")
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


def test_with_default_settings_a_whole_worker_killed_on_redis_is_noticed_within_a_minute(
    tmp_path: Path,
    migrated_postgres: str,
    redis_server: PrivateRedis,
    queue_name: str,
    fault_registry: dict[str, Any],
    record: Record,
) -> None:
    # Given two workers on Redis with the default lease and reconciler, and a job of three chunks
    env = worker_env(
        migrated_postgres,
        redis_server.url,
        queue_name,
        fault_registry,
        recover_interval=constants.DEFAULT_RECOVER_INTERVAL,
    )
    assert "INFERQ_LEASE_SECONDS" not in env
    with (
        running_workers(env, [tmp_path / "a.log", tmp_path / "b.log"], "--models", "slow") as (a, b),
        client_for(env) as client,
    ):
        job_id = client.submit("classification", "slow", sentences(3 * CHUNK), chunk_size=CHUNK).job_id

        # When the worker computing the first chunk to start is SIGKILLed whole (its message stays unacknowledged
        # in Redis, which would hand it back only after the visibility timeout, hours)
        victim = wait_for(lambda: record.running_chunk(job_id), 120, "a chunk to start")
        dead = os.getpgid(pid_of(victim.worker))
        assert dead in (a.pid, b.pid)
        os.killpg(dead, signal.SIGKILL)
        killed_at = time.monotonic()

        # Then within a minute the chunk is claimed again, by the surviving worker
        budget = constants.DEFAULT_LEASE_SECONDS * 1.5 + 15
        assert budget <= 60
        wait_for(
            lambda: record.chunks(job_id)[victim.seq].attempts == 2, budget, "the killed chunk to be claimed again"
        )
        noticed = time.monotonic() - killed_at
        status = client.wait(job_id, timeout=60)
        finished = time.monotonic() - killed_at
        finisher = os.getpgid(pid_of(record.chunks(job_id)[victim.seq].worker))

    # And the job succeeded soon after, every item exactly once, the killed chunk's items run twice, the others once
    assert status.state.value == "succeeded", (noticed, finished)
    items = record.assert_every_item_once(job_id)
    chunk = record.chunks(job_id)[victim.seq]
    assert chunk.attempts == 2 and finisher != dead
    for item in items:
        assert item.attempts == (2 if chunk.start <= item.index < chunk.stop else 1), item.index
    assert finished < 90, f"noticed after {noticed:.0f}s, finished after {finished:.0f}s"


def test_a_live_worker_whose_chunk_outlasts_its_lease_keeps_it(
    tmp_path: Path,
    migrated_postgres: str,
    redis_server: PrivateRedis,
    queue_name: str,
    fault_registry: dict[str, Any],
    record: Record,
) -> None:
    # Given a worker of two pool processes with a short lease and its reconciler looking every second, so that a
    # chunk whose lease lapsed would be re-enqueued at once and taken by the idle process
    lease, recover_interval = 5, 1
    env = worker_env(
        migrated_postgres,
        redis_server.url,
        queue_name,
        fault_registry,
        lease_seconds=lease,
        recover_interval=recover_interval,
    )
    with (
        running_worker(env, tmp_path / "worker.log", "--models", "slow", "--concurrency", "2"),
        client_for(env) as client,
    ):
        # When it runs one chunk that outlasts its lease (3,000 items took 4.8 s on a quiet CPU with AMX, 8 s or
        # more elsewhere: 9,000 outlast it everywhere)
        job_id = client.submit("classification", "slow", sentences(30 * CHUNK), chunk_size=30 * CHUNK).job_id
        status = client.wait(job_id, timeout=180)

    # Then the chunk ran once, in one process, its items once each: nobody took it from its live worker
    assert status.state.value == "succeeded"
    job = record.job(job_id)
    assert job.started_at is not None and job.finished_at is not None
    took = (job.finished_at - job.started_at).total_seconds()
    # (long enough that a lease never renewed would have lapsed and been seen by two reconciler rounds)
    assert took > lease + 2 * recover_interval, f"the chunk took {took:.1f}s, within its lease: this proves nothing"
    items = record.assert_every_item_once(job_id)
    (chunk,) = record.chunks(job_id)
    assert chunk.attempts == 1
    assert all(i.attempts == 1 for i in items)
