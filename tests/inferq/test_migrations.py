"""The Alembic migrations build exactly the schema the models describe, on PostgreSQL and on SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from inferq import migrate
from inferq.db import make_engine
from inferq.schema import Base
from inferq.settings import Settings


def schema_diff(settings: Settings) -> list[object]:
    engine = make_engine(settings)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def test_sqlite_migration_equals_the_models(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}")
    migrate.upgrade(settings)
    assert migrate.current(settings) is not None
    assert schema_diff(settings) == []


@pytest.mark.services
def test_postgres_migration_equals_the_models_and_downgrades(postgres_url: str) -> None:
    settings = Settings(database_url=postgres_url)
    migrate.upgrade(settings)
    assert schema_diff(settings) == []
    migrate.downgrade(settings, "base")
    assert migrate.current(settings) is None
    migrate.upgrade(settings)
    assert schema_diff(settings) == []
