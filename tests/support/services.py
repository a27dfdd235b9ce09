"""Real services for tests: PostgreSQL and Redis on this machine. Locally a test that needs one skips with the
reason when it is down; under ``CI=true`` it fails instead."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

PG_URL = os.environ.get("INFERQ_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("INFERQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("INFERQ_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> None:
    """Skip locally; fail in CI, where every service must be up."""
    if in_ci():
        pytest.fail(f"service unavailable under CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def require_redis() -> str:
    if not _reachable("127.0.0.1", 6379):
        unavailable("Redis is not reachable at 127.0.0.1:6379")
    return REDIS_URL


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """A new, empty PostgreSQL database for this test session; dropped afterwards."""
    if not _reachable("127.0.0.1", 5432):
        unavailable("PostgreSQL is not reachable at 127.0.0.1:5432")
    import psycopg

    admin = PG_URL.replace("postgresql://", "postgresql://", 1)
    name = f"inferq_test_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        unavailable(f"PostgreSQL refused a connection: {exc}")
    base, _, _ = admin.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
