"""A runner in this process against the tests' PostgreSQL database, holding the tiny classification models."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from inferq.db import make_engine, make_sessionmaker
from inferq.settings import Settings
from worker.model_cache import ModelCache
from worker.runner import Runner


@pytest.fixture
def settings(migrated_postgres: str, registry_json: str) -> Settings:
    """One message runs one chunk (no continuation): each test says which chunks run, and chunks other tests left
    queued in the shared database stay where they are. The continuation has tests of its own
    (`tests.worker.test_continuation`)."""
    return Settings(
        database_url=migrated_postgres, models=json.loads(registry_json), max_batch_tokens=1024, continue_chunks=0
    )


@pytest.fixture
def runner(settings: Settings) -> Iterator[Runner]:
    engine = make_engine(settings)
    yield Runner(settings, make_sessionmaker(engine), ModelCache(settings), worker="test")
    engine.dispose()
