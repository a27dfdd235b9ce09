"""Fixtures for fault tests: a model slow enough that a chunk takes seconds (so a fault lands mid-chunk), brokers
(a private Redis per test, which the test may restart empty, or the shared RabbitMQ), the SQL record, and the
environment of real ``inferq worker`` processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.brokers import PrivateRedis, delete_queue, private_redis, require_amqp
from tests.support.records import Record


@pytest.fixture(scope="session")
def slow_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DistilBERT classifier of width 256 and 4 layers (random weights): about 15 ms an item on one CPU core,
    so a chunk of 150 items takes a couple of seconds."""
    from inferq.task_specs import TaskName
    from tests.support.tiny_models import build_model

    path = tmp_path_factory.mktemp("models") / "slow"
    return build_model(
        path, TaskName.CLASSIFICATION, "distilbert", size="base", dim=256, hidden_dim=1024, n_layers=4, n_heads=4
    )


@pytest.fixture(scope="session")
def fault_registry(slow_model: Path) -> dict[str, Any]:
    return {"slow": {"source": str(slow_model), "task": "classification"}}


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[PrivateRedis]:
    with private_redis(tmp_path) as server:
        yield server


@pytest.fixture(params=["redis", "amqp"])
def broker_url(request: pytest.FixtureRequest, tmp_path: Path, queue_name: str) -> Iterator[str]:
    """Each broker inferq supports with a server: a private Redis, or the shared RabbitMQ (this test's queue is
    deleted afterwards)."""
    if request.param == "redis":
        with private_redis(tmp_path) as server:
            yield server.url
    else:
        url = require_amqp()
        yield url
        delete_queue(url, queue_name)


#: ``env_for(**settings)``: the environment of this test's workers and client with settings of its own.
EnvFor = Callable[..., dict[str, str]]


@pytest.fixture
def env_for(migrated_postgres: str, broker_url: str, queue_name: str, fault_registry: dict[str, Any]) -> EnvFor:
    """`fault_env` with settings of the test's own by name: ``env_for(lease_seconds=10, dispatch_window=1)``."""
    from tests.support.jobs import worker_env

    def make(**extra: str | int) -> dict[str, str]:
        return worker_env(migrated_postgres, broker_url, queue_name, fault_registry, **extra)

    return make


@pytest.fixture
def fault_env(env_for: EnvFor) -> dict[str, str]:
    """The environment of this test's workers and client: the test's database, broker and queue, the slow model."""
    return env_for()


@pytest.fixture
def redis_env(
    migrated_postgres: str, redis_server: PrivateRedis, queue_name: str, fault_registry: dict[str, Any]
) -> dict[str, str]:
    """`fault_env` on this test's private Redis (`redis_server`, which the test may restart or read)."""
    from tests.support.jobs import worker_env

    return worker_env(migrated_postgres, redis_server.url, queue_name, fault_registry)


@pytest.fixture
def record(migrated_postgres: str) -> Iterator[Record]:
    rec = Record(migrated_postgres)
    yield rec
    rec.close()
