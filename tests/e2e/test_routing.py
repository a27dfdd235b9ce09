"""Routing on real Redis: a model with a queue of its own goes there, and only a worker that holds it consumes
it; ``celery -A worker.app worker`` runs jobs as well as ``inferq worker`` does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from inferq.settings import Settings
from producer.client import Client
from worker.process import running_worker

pytestmark = pytest.mark.services


def test_a_model_with_its_own_queue_is_served_only_by_a_worker_that_holds_it(
    tmp_path: Path, tiny_models: dict[str, Path], migrated_postgres: str, redis_url: str, queue_name: str
) -> None:
    # Given a registry where model "a" has a queue of its own and "b" uses the default queue
    own_queue = f"{queue_name}-a"
    models = {
        "a": {"source": str(tiny_models["cls-distilbert"]), "task": "classification", "queue": own_queue},
        "b": {"source": str(tiny_models["cls-roberta"]), "task": "classification"},
    }
    env = {
        "INFERQ_DATABASE_URL": migrated_postgres,
        "INFERQ_BROKER_URL": redis_url,
        "INFERQ_MODELS": json.dumps(models),
        "INFERQ_DEFAULT_QUEUE": queue_name,
        # Every message sent at submit, so that the queues can be read before any worker (or dispatcher) runs
        "INFERQ_DISPATCH": "direct",
    }
    settings = Settings(
        database_url=migrated_postgres, broker_url=redis_url, models=models, default_queue=queue_name, dispatch="direct"
    )
    broker = redis.Redis.from_url(redis_url)
    with Client(settings) as client:
        # When a job for each is submitted
        job_a = client.submit("classification", "a", ["one", "two", "three"], chunk_size=1)
        job_b = client.submit("classification", "b", ["four", "five"], chunk_size=1)
        # Then a's chunks wait on a's queue, b's on the default queue
        assert broker.llen(own_queue) == 3
        assert broker.llen(queue_name) == 2

        # When a worker that holds only the default queue runs, b finishes and a keeps waiting
        with running_worker(env, tmp_path / "default.log"):
            assert client.wait(job_b.job_id, timeout=120).state.value == "succeeded"
            # (and a job submitted after b is done finishes too: the worker has taken messages again since, while
            # a's were on the broker all along)
            after = client.submit("classification", "b", ["six"], chunk_size=1)
            assert client.wait(after.job_id, timeout=120).state.value == "succeeded"
            assert client.status(job_a.job_id).state.value == "queued"
            assert broker.llen(own_queue) == 3

        # When a worker that preloads "a" runs, a finishes too
        with running_worker(env, tmp_path / "a.log", "--models", "a"):
            assert client.wait(job_a.job_id, timeout=120).state.value == "succeeded"


def test_celery_dash_a_worker_app_runs_jobs(
    tmp_path: Path,
    tiny_models: dict[str, Path],
    registry_json: str,
    migrated_postgres: str,
    redis_url: str,
    queue_name: str,
) -> None:
    # Given a plain `celery -A worker.app worker` on the default queue
    env = {
        **os.environ,
        "INFERQ_DATABASE_URL": migrated_postgres,
        "INFERQ_BROKER_URL": redis_url,
        "INFERQ_MODELS": registry_json,
        "INFERQ_DEFAULT_QUEUE": queue_name,
    }
    log_path = tmp_path / "celery.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q", queue_name, "-c", "1", "-l", "INFO"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        settings = Settings(
            database_url=migrated_postgres,
            broker_url=redis_url,
            models=json.loads(registry_json),
            default_queue=queue_name,
        )
        with Client(settings) as client:
            # When a job is submitted
            sub = client.submit("classification", "cls-distilbert", ["I love you", "I hate you"])
            # Then that worker runs it
            status = client.wait(sub.job_id, timeout=180)
            assert status.state.value == "succeeded", log_path.read_text(errors="replace")
            assert [r.status for r in client.results(sub.job_id)] == ["succeeded", "succeeded"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
