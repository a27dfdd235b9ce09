"""One real ``inferq worker`` per test module, on Redis and PostgreSQL, and a client on it. A module names the
worker's models (`worker_models`) and may add settings (`worker_extra_env`) and options (`worker_args`)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from inferq.settings import Settings
from producer.client import Client
from worker.process import running_worker


@pytest.fixture(scope="module")
def worker_models() -> dict[str, dict[str, Any]]:
    """The registry (``INFERQ_MODELS``) of the module's worker: a module that uses `worker_env` defines it."""
    raise NotImplementedError("define a module-scoped `worker_models` fixture in the test module")


@pytest.fixture(scope="module")
def worker_extra_env() -> dict[str, str]:
    """Settings of the module's worker (and of its clients) besides the databases, queue and models."""
    return {}


@pytest.fixture(scope="module")
def worker_args() -> tuple[str, ...]:
    """``inferq worker`` options of the module's worker."""
    return ()


@pytest.fixture(scope="module")
def worker_env(
    worker_models: dict[str, dict[str, Any]],
    worker_extra_env: dict[str, str],
    worker_args: tuple[str, ...],
    migrated_postgres: str,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, str]]:
    """The environment of the module's worker, which runs until the module's last test ends."""
    env = {
        "INFERQ_DATABASE_URL": migrated_postgres,
        "INFERQ_BROKER_URL": redis_url,
        "INFERQ_MODELS": json.dumps(worker_models),
        "INFERQ_DEFAULT_QUEUE": f"inferq-test-{uuid.uuid4().hex[:10]}",
        **worker_extra_env,
    }
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    with running_worker(env, log, *worker_args):
        yield env


@pytest.fixture
def client(worker_env: dict[str, str]) -> Iterator[Client]:
    settings = Settings(
        database_url=worker_env["INFERQ_DATABASE_URL"],
        broker_url=worker_env["INFERQ_BROKER_URL"],
        models=json.loads(worker_env["INFERQ_MODELS"]),
        default_queue=worker_env["INFERQ_DEFAULT_QUEUE"],
    )
    with Client(settings) as c:
        yield c
