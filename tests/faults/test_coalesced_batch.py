"""A worker SIGKILLed while it runs a batch of many jobs (coalescing): the leader's message comes back, releases
its batch-mates, and every job still ends with each item exactly once."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.support.jobs import client_for, pid_of, sentences
from tests.support.records import Record, wait_for
from tests.support.worker_process import worker_log
from worker.process import running_worker

pytestmark = [pytest.mark.services, pytest.mark.slow]

#: One-item jobs: about 3 s of the slow model in one batch, so that a kill lands mid-batch.
JOBS = 200


def test_a_pool_process_killed_mid_batch_loses_and_repeats_nothing(
    tmp_path: Path, fault_env: dict[str, str], record: Record
) -> None:
    # Given 200 one-item jobs waiting for a worker that batches up to 256 items (every message sent at submit, as
    # the coalescing protocol's story here has it: each mate's own message comes and is deferred)
    fault_env = {**fault_env, "INFERQ_DISPATCH": "direct"}
    with client_for(fault_env) as client:
        jobs = [client.submit("classification", "slow", [row]).job_id for row in sentences(JOBS)]

        log_path = tmp_path / "worker.log"
        with running_worker(fault_env, log_path, "--models", "slow", "--concurrency", "2"):
            # When the pool process leading the batch is SIGKILLed mid-batch
            def big_batch() -> str | None:
                return next((lead for lead, mates in record.batches(jobs).items() if mates > 50), None)

            leader = wait_for(big_batch, 60, "a batch of many jobs to start").split("/")[0]
            holder = record.chunks(leader)[0].worker
            os.kill(pid_of(holder), signal.SIGKILL)
            statuses = [client.wait(job_id, timeout=240) for job_id in jobs]

    # Then every job succeeded with its item exactly once; the killed batch's items count two attempts at most
    assert all(s.state.value == "succeeded" for s in statuses)
    attempts = [record.assert_every_item_once(job_id)[0].attempts for job_id in jobs]
    assert set(attempts) <= {1, 2} and 2 in attempts
    assert record.chunks(leader)[0].attempts == 2
    # And the paths were the ones meant: batch-mates' messages deferred while the batch ran (the other pool
    # process took them), the leader's redelivery released its batch-mates to them
    log = worker_log(log_path)
    assert "running in another worker's batch; looking again later" in log
    assert f"job {leader} chunk 0: released" in log
