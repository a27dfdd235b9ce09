"""Pools on real workers: two threads of one process sharing the loaded model store every item exactly once, and
``--concurrency 2`` is no slower than one process on this machine's cores (the thread policy)."""

from __future__ import annotations

import uuid
from contextlib import ExitStack
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


#: Rounds per pool; the best of each is compared (the machine is shared: one round may meet other load).
ROUNDS = 3
#: Two processes must reach this share of one process's best: "no slower", with room for a shared 2-core
#: machine's noise; an oversubscribed pool (each child with every core as torch threads) ran at 0.37 of it.
NO_SLOWER = 0.8


@pytest.mark.slow
def test_concurrency_two_is_no_slower_than_one(
    tmp_path: Path,
    tiny_models: dict[str, Path],
    migrated_postgres: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given two idle workers of the default thread policy, on queues of their own: one process, and two
    for var in ("OMP_NUM_THREADS", "INFERQ_TORCH_THREADS"):
        monkeypatch.delenv(var, raising=False)
    registry = {"cls-distilbert": {"source": str(tiny_models["cls-distilbert"]), "task": "classification"}}
    envs = {}
    for concurrency in (1, 2):
        env = worker_env(migrated_postgres, redis_url, f"inferq-test-{uuid.uuid4().hex[:10]}", registry)
        del env["OMP_NUM_THREADS"]  # the thread policy decides
        envs[concurrency] = env
    items = sentences(600)
    best = {1: 0.0, 2: 0.0}
    with ExitStack() as stack:
        for concurrency, env in envs.items():
            stack.enter_context(
                running_worker(
                    env,
                    tmp_path / f"c{concurrency}.log",
                    "--models",
                    "cls-distilbert",
                    "--concurrency",
                    str(concurrency),
                )
            )
        clients = {c: stack.enter_context(client_for(env)) for c, env in envs.items()}
        # A first job each: the pool processes load the model
        for client in clients.values():
            client.wait(
                client.submit("classification", "cls-distilbert", items[:40], chunk_size=10).job_id, timeout=180
            )

        # When the same job runs on each, in interleaved rounds
        for _ in range(ROUNDS):
            for c, client in clients.items():
                status = client.wait(
                    client.submit("classification", "cls-distilbert", items, chunk_size=50).job_id, timeout=300
                )
                assert status.succeeded == len(items)
                assert status.items_per_second is not None
                best[c] = max(best[c], status.items_per_second)

    # Then two processes are no slower than one
    assert best[2] >= NO_SLOWER * best[1], best
