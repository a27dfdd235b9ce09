"""Issue 25, with real workers on Redis and RabbitMQ: a second tenant's small job does not wait for a first
tenant's big one, and the dispatcher's leader SIGKILLed is replaced with nothing lost and nothing run twice.

Bounds are counted in chunks (which of the big job's chunks ended while the small job waited), never in seconds:
this machine is shared and loaded. The order itself, weights and priorities, is counted message by message in
tests/inferq/test_dispatcher.py."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from inferq.schema import Chunk, Job
from inferq.store.dispatch import in_flight
from inferq.tenants import set_share
from producer.client import JobOptions
from tests.faults.conftest import EnvFor
from tests.support.jobs import client_for, pid_of, sentences
from tests.support.records import Record, wait_for
from worker.process import running_worker, running_workers

pytestmark = [pytest.mark.services, pytest.mark.slow]

#: Items per chunk: a second or so of the slow model, so that a chunk is a unit of time the test can count in.
CHUNK = 60

#: What a dispatcher logs when its worker takes the lead.
LEADS = "dispatcher: this worker leads"

#: Seconds the batch-mates test waits for its twenty one-chunk jobs (a few seconds each on a quiet machine).
ALL_JOBS_TIMEOUT = 300


@pytest.fixture
def migrated_postgres(own_postgres: str) -> str:
    """A database of each test's own: a leader dispatches every job of its database, and a tenant's cap counts its
    chunks in flight on every queue, so an earlier test's unfinished job of the same tenant (its chunks released to
    a queue no worker consumes any more) would hold a capped tenant back for good."""
    return own_postgres


def test_a_small_job_of_another_tenant_runs_within_two_chunks_of_a_big_one(
    tmp_path: Path, env_for: EnvFor, record: Record
) -> None:
    # Given one worker of one process that coalesces chunks of other jobs into its batches, a window of one message,
    # and tenant alpha's big job running
    env = env_for(dispatch_window=1)
    with (
        running_worker(env, tmp_path / "worker.log", "--models", "slow", "--concurrency", "1"),
        client_for(env) as client,
    ):
        big = client.submit(
            "classification", "slow", sentences(12 * CHUNK), chunk_size=CHUNK, options=JobOptions(tenant="alpha")
        ).job_id
        wait_for(lambda: record.job(big).succeeded >= CHUNK, 180, "the big job's first chunk to end")

        # When tenant beta submits a job of one chunk
        small = client.submit(
            "classification", "slow", sentences(CHUNK, offset=7), chunk_size=CHUNK, options=JobOptions(tenant="beta")
        ).job_id
        status = client.wait(small, timeout=300)
        big_done_then = sum(c.state.value == "done" for c in record.chunks(big))
        client.wait(big, timeout=300)

    # Then it finished while the big job still ran, after at most two of the big job's chunks (the one running
    # when it came and the one already waiting on the broker)
    assert status.state.value == "succeeded"
    record.assert_every_item_once(small)
    record.assert_every_item_once(big)
    assert big_done_then < 12
    small_job = record.job(small)
    assert small_job.finished_at is not None
    ended_meanwhile = [
        c.seq
        for c in record.chunks(big)
        if c.finished_at is not None and small_job.created_at < c.finished_at < small_job.finished_at
    ]
    assert len(ended_meanwhile) <= 2, ended_meanwhile


def test_the_dispatchers_leader_sigkilled_is_replaced_with_nothing_lost_or_run_twice(
    tmp_path: Path, env_for: EnvFor, record: Record
) -> None:
    # Given two workers, each running a dispatcher, short leases and reconcilers on, and a job of many chunks
    env = env_for(dispatch_window=2, lease_seconds=10, recover_interval=2, coalesce_items=0)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    with (
        running_workers(env, logs, "--models", "slow", "--concurrency", "1") as procs,
        client_for(env) as client,
    ):
        job_id = client.submit("classification", "slow", sentences(10 * CHUNK), chunk_size=CHUNK).job_id
        leading = wait_for(
            lambda: [i for i, log in enumerate(logs) if LEADS in log.read_text(errors="replace")], 60, "a leader"
        )
        assert len(leading) == 1, "two leaders at once"
        leader = leading[0]
        wait_for(lambda: record.job(job_id).succeeded >= CHUNK, 180, "a first chunk to end")

        # When the leading worker is SIGKILLed whole (main process, its dispatcher and its pool)
        dead = procs[leader].pid
        pids = group_pids(dead)
        os.killpg(dead, signal.SIGKILL)
        # (what it held is read after the kill: a chunk takes a tenth of a second here, and one it claimed between a
        # read before the kill and the kill would count as run twice for no reason)
        held = {c.seq for c in record.chunks(job_id) if c.state.value == "running" and pid_of(c.worker) in pids}
        status = client.wait(job_id, timeout=300)

    # Then the other worker took the lead and the job succeeded with every item exactly once
    survivor = logs[1 - leader].read_text(errors="replace")
    assert LEADS in survivor
    assert status.state.value == "succeeded"
    record.assert_every_item_once(job_id)
    # And no chunk ran twice but the one the dead worker held
    twice = {c.seq for c in record.chunks(job_id) if c.attempts > 1}
    assert twice <= held, (twice, held)
    assert not re.search(r"dispatcher: round failed", survivor)


def test_batch_mates_are_only_chunks_the_dispatcher_released(
    tmp_path: Path, env_for: EnvFor, queue_name: str, record: Record
) -> None:
    # Given tenant alpha capped at one chunk in flight and tenant beta uncapped, each with ten one-chunk jobs of the
    # same model and parameters (batch-mates for each other), and a worker of one process that coalesces up to ten
    # chunks into a batch
    env = env_for(dispatch_window=8, coalesce_items=10 * CHUNK)
    with Session(record.engine) as session, session.begin():
        set_share(session, "alpha", max_chunks_in_flight=1)
        set_share(session, "beta")
    with client_for(env) as client:
        jobs = {
            tenant: [
                client.submit(
                    "classification",
                    "slow",
                    sentences(CHUNK, offset=i * CHUNK),
                    chunk_size=CHUNK,
                    options=JobOptions(tenant=tenant),
                ).job_id
                for i in range(10)
            ]
            for tenant in ("alpha", "beta")
        }
        every = jobs["alpha"] + jobs["beta"]

        # When the worker runs them
        alpha_in_flight: list[int] = []
        batch_sizes: list[int] = []
        log_path = tmp_path / "worker.log"
        deadline = time.monotonic() + ALL_JOBS_TIMEOUT
        with running_worker(env, log_path, "--models", "slow", "--concurrency", "1"):
            while not all(record.job(j).state.finished for j in every):
                assert time.monotonic() < deadline, stuck(record, every, log_path)
                with Session(record.engine) as session:
                    alpha_in_flight.append(
                        session.query(Chunk)
                        .join(Job, Job.id == Chunk.job_id)
                        .filter(
                            Job.tenant == "alpha",
                            (Chunk.state == "running") | ((Chunk.state == "queued") & Chunk.enqueued_at.is_not(None)),
                        )
                        .count()
                    )
                batch_sizes += record.batches(every).values()
                time.sleep(0.05)
            statuses = [client.wait(j, timeout=60) for j in every]

    # Then alpha never had more than its one chunk in flight, batch-mates included, though batches of several
    # chunks ran (beta's released chunks)
    assert max(alpha_in_flight) <= 1, alpha_in_flight
    assert batch_sizes and max(batch_sizes) >= 2, batch_sizes
    # And every job succeeded with each item once, each chunk claimed once: a batch-mate's own message, delivered
    # after its batch, claimed nothing
    assert all(s.state.value == "succeeded" for s in statuses)
    for job_id in every:
        record.assert_every_item_once(job_id)
        assert [c.attempts for c in record.chunks(job_id)] == [1], job_id
    # And the dispatcher's count of what is in flight went back to nothing
    with Session(record.engine) as session:
        assert not [row for row in in_flight(session) if row.queue == queue_name]


def group_pids(pgid: int) -> set[int]:
    """The processes of process group ``pgid`` (a worker started in a session of its own: its main process and
    its pool)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    pids.add(int(entry.name))
            except ProcessLookupError:
                continue
    return pids


def stuck(record: Record, jobs: list[str], log_path: Path) -> str:
    """Why jobs did not finish: each unfinished job's chunks by state (released or not), and the worker's log."""
    lines = [f"jobs not finished after {ALL_JOBS_TIMEOUT}s:"]
    for job_id in jobs:
        job = record.job(job_id)
        if not job.state.finished:
            chunks = [
                f"{c.seq}:{c.state.value}{'' if c.enqueued_at is None else '+released'} x{c.attempts}"
                for c in record.chunks(job_id)
            ]
            lines.append(f"  {job_id} ({job.tenant}, {job.state.value}): {', '.join(chunks)}")
    lines.append(log_path.read_text(errors="replace")[-6_000:])
    return "\n".join(lines)
