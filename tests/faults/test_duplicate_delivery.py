"""Issue 5, point 7 (and 10): the same chunk message published twice and delivered to two real workers at the same
time. Both compute it; every item gets one result, written by one of them, and the job's counts are exact. On Redis
and RabbitMQ."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.jobs import client_for, sentences
from tests.support.records import Record, wait_for
from tests.support.worker_process import worker_log
from worker.process import running_workers

pytestmark = pytest.mark.services

CHUNK = 400


def test_one_chunk_delivered_to_two_workers_at_once_gets_one_result_per_item(
    tmp_path: Path,
    fault_env: dict[str, str],
    queue_name: str,
    record: Record,
) -> None:
    # Given two idle workers with their model loaded, and chunks sent at submit (the dispatcher would never send a
    # chunk that the extra message's delivery had already claimed: there would be one delivery, not two at once)
    fault_env = {**fault_env, "INFERQ_DISPATCH": "direct"}
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    with running_workers(fault_env, logs, "--models", "slow"), client_for(fault_env) as client:
        wait_for(lambda: all("loaded slow" in worker_log(p) for p in logs), 60, "both workers to load the model")

        # When a job of one chunk is submitted and its message is published a second time
        job_id = client.submit("classification", "slow", sentences(CHUNK), chunk_size=CHUNK).job_id
        client.celery.send_task("inferq.run_chunk", args=[job_id, 0], queue=queue_name)
        status = client.wait(job_id, timeout=120)
        wait_for(lambda: all(f"{job_id} chunk 0: " in worker_log(p) for p in logs), 60, "both deliveries to end")

    # Then both workers claimed and computed the chunk at the same time
    chunk = record.chunks(job_id)[0]
    assert (chunk.state, chunk.attempts) == ("done", 2)
    written = [_written(worker_log(p), job_id) for p in logs]
    # And every item was written once, by one of them; the counts are exact
    assert sorted(written) == [0, CHUNK], written
    assert (status.state.value, status.succeeded, status.failed) == ("succeeded", CHUNK, 0)
    items = record.assert_every_item_once(job_id)
    assert {i.attempts for i in items} == {2}


def _written(log: str, job_id: str) -> int:
    match = re.search(rf"job {job_id} chunk 0: done, (\d+) succeeded", log)
    assert match, log
    return int(match.group(1))
