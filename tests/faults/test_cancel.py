"""Issue 5, point 6: `inferq cancel` on a job a real worker is computing. The worker stops the chunk between two
micro-batches, the results finished before the cancel stay queryable, and the job ends ``cancelled`` with its
counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.jobs import client_for, inferq_cli, sentences
from tests.support.records import Record, wait_for
from tests.support.worker_process import worker_log
from worker.process import running_worker

pytestmark = pytest.mark.services

#: Items per chunk: several seconds of the slow model, so that the cancel lands while the second chunk computes.
CHUNK = 1000


def test_cancel_stops_a_running_job_between_micro_batches_and_keeps_finished_results(
    tmp_path: Path, redis_env: dict[str, str], record: Record
) -> None:
    # Given a worker computing the second chunk of a job of three
    env = redis_env
    with running_worker(env, tmp_path / "worker.log", "--models", "slow"), client_for(env) as client:
        job_id = client.submit("classification", "slow", sentences(3 * CHUNK), chunk_size=CHUNK).job_id
        wait_for(
            lambda: record.job(job_id).succeeded == CHUNK and record.running_chunk(job_id),
            120,
            "the first chunk done and the second running",
        )

        # When the user cancels the job
        done = inferq_cli(env, "cancel", job_id)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"job {job_id} cancelled: {CHUNK} succeeded, 0 failed of {3 * CHUNK}"

        # Then the worker stops the second chunk between two micro-batches instead of computing it to the end
        wait_for(lambda: f"{job_id} chunk 1: " in worker_log(tmp_path / "worker.log"), 60, "chunk 1 to stop")
        log = worker_log(tmp_path / "worker.log")
        assert f"job {job_id} chunk 1: stopped, 0 succeeded" in log, log
        # And the third chunk never computes (its message finds the job cancelled)
        wait_for(lambda: all(c.state != "running" for c in record.chunks(job_id)), 30, "the worker to let go")
        assert f"{job_id} chunk 2:" not in worker_log(tmp_path / "worker.log")

    # And the job is cancelled with its counts; finished results stay, the rest is cancelled, nothing is queued
    status = json.loads(inferq_cli(env, "status", job_id, "--json").stdout)
    assert (status["state"], status["succeeded"], status["failed"], status["total"]) == (
        "cancelled",
        CHUNK,
        0,
        3 * CHUNK,
    )
    items = record.assert_every_item_once(job_id, state="cancelled")
    assert [i.state for i in items] == ["succeeded"] * CHUNK + ["cancelled"] * (2 * CHUNK)
    exported = inferq_cli(env, "results", job_id, "--format", "jsonl")
    lines = [json.loads(line) for line in exported.stdout.splitlines()]
    assert len(lines) == 3 * CHUNK
    assert all(ln["status"] == "succeeded" and ln["result"] for ln in lines[:CHUNK])
    assert all(ln["status"] == "cancelled" and ln["result"] is None for ln in lines[CHUNK:])
