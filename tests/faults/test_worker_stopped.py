"""Issue 5, point 2: a worker stopped with SIGTERM shuts down warm. The micro-batch being computed finishes, the
items that ran are stored, the rest of the chunk is handed back to the broker at once, and the next worker
finishes the job without running any item twice.

SIGTERM reaches a prefork worker in two ways: to its main process only (``kill PID``, ``docker stop``), or to its
whole process group (a terminal, systemd). Both are tested."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.support.brokers import ready_messages
from tests.support.jobs import client_for, sentences
from tests.support.records import Record, wait_for
from tests.support.worker_process import worker_log
from worker.process import running_worker

pytestmark = pytest.mark.services

#: One chunk of several seconds (hundreds of micro-batches), so that a SIGTERM lands well inside it.
CHUNK = 600


@pytest.mark.parametrize(
    ("broker_url", "whom"),
    [("redis", "main process"), ("amqp", "process group")],
    indirect=["broker_url"],
)
def test_sigterm_finishes_the_micro_batch_and_hands_the_rest_of_the_chunk_back(
    whom: str,
    tmp_path: Path,
    broker_url: str,
    queue_name: str,
    fault_env: dict[str, str],
    record: Record,
) -> None:
    env = fault_env
    with client_for(env) as client:
        # Given a worker computing a job of one long chunk
        with running_worker(env, tmp_path / "first.log", "--models", "slow") as worker:
            job_id = client.submit("classification", "slow", sentences(CHUNK), chunk_size=CHUNK).job_id
            wait_for(lambda: record.running_chunk(job_id), 60, "the chunk to start")
            time.sleep(0.5)

            # When it gets SIGTERM mid-chunk
            stopped_at = time.monotonic()
            if whom == "main process":
                os.kill(worker.pid, signal.SIGTERM)
            else:
                os.killpg(worker.pid, signal.SIGTERM)
            assert worker.wait(timeout=60) == 0
            took = time.monotonic() - stopped_at

        # Then it stored the micro-batches that ran, put the chunk back to queued, and its message is on the broker
        log = worker_log(tmp_path / "first.log")
        assert "handed back to the broker (worker shutting down)" in log, log
        assert "WorkerLostError" not in log
        chunk = record.chunks(job_id)[0]
        assert (chunk.state, chunk.attempts, chunk.lease_until) == ("queued", 1, None)
        first = {i.index for i in record.items(job_id) if i.state == "succeeded"}
        assert 0 < len(first) < CHUNK, f"{len(first)} items stored by the stopped worker"
        job = record.job(job_id)
        assert (job.state, job.succeeded, job.failed) == ("running", len(first), 0)
        assert ready_messages(broker_url, queue_name) == 1
        print(f"SIGTERM to the {whom}: stopped in {took:.1f}s with {len(first)} of {CHUNK} items stored")

        # When another worker starts
        with running_worker(env, tmp_path / "second.log", "--models", "slow"):
            status = client.wait(job_id, timeout=120)

    # Then the job succeeded, every item exactly once: the stored items were not run again
    assert status.state.value == "succeeded"
    for item in record.assert_every_item_once(job_id):
        assert item.attempts == (1 if item.index in first else 2), item.index
