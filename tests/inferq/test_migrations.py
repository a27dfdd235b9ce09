"""The Alembic migrations build exactly the schema the models describe, on PostgreSQL and on SQLite."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from inferq import migrate
from inferq.db import make_engine
from inferq.schema import Base, as_utc
from inferq.settings import Settings
from inferq.store.results import items_with_results
from tests.support.services import fresh_postgres_database


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


# -- 0006: results move from items to their own table ------------------------------------------------------------------

T0 = dt.datetime(2026, 12, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)
VECTOR = np.arange(6, dtype="<f4").tobytes()

#: One stored item per task (and a failed one, a cancelled one, a queued one), as the worker wrote them at 0005: the
#: job's task, the job's state, then the item's outcome columns (its state first).
STORED_AT_0005: list[tuple[str, str, dict[str, Any]]] = [
    (
        "classification",
        "succeeded",
        {"state": "succeeded", "result": [{"label": "POSITIVE", "score": 0.9}], "label": "POSITIVE", "score": 0.9},
    ),
    (
        "question_answering",
        "succeeded",
        {
            "state": "succeeded",
            "result": [{"answer": "Paris", "score": 0.5, "start": 7, "end": 12}],
            "answer": "Paris",
            "score": 0.5,
            "start_char": 7,
            "end_char": 12,
        },
    ),
    (
        "fill_mask",
        "succeeded",
        {"state": "succeeded", "result": [[{"token_str": "cat", "score": 0.25}]], "label": "cat", "score": 0.25},
    ),
    (
        "token_classification",
        "succeeded",
        {
            "state": "succeeded",
            "result": [{"entity_group": "PER", "word": 'Ünï "q"', "start": 0, "end": 3, "score": 0.75}],
            "label": "PER",
            "score": 0.75,
            "entity_count": 1,
        },
    ),
    (
        "embedding",
        "succeeded",
        {"state": "succeeded", "result": {"dim": 6, "dtype": "float32"}, "vector": VECTOR},
    ),
    (
        "rerank",
        "succeeded",
        {"state": "succeeded", "result": [{"index": 1, "score": 3.5}, {"index": 0, "score": -1.0}], "score": 3.5},
    ),
    (
        "zero_shot_classification",
        "succeeded",
        {"state": "succeeded", "result": {"labels": ["b", "a"], "scores": [0.7, 0.3]}, "label": "b", "score": 0.7},
    ),
    (
        "classification",
        "failed",
        {"state": "failed", "error_code": "inference_error", "error_message": "RuntimeError: boom"},
    ),
    ("classification", "cancelled", {"state": "cancelled"}),
    ("classification", "running", {"state": "queued"}),
]


def store_at_0005(engine: Engine) -> dict[str, dict[str, Any]]:
    """One job per entry of `STORED_AT_0005`, its one item written with the 0005 schema's columns (the item's
    attempts and end time too); each item's columns by job id."""
    items = sa.table(
        "items",
        *(sa.column(c) for c in ("job_id", "index", "client_id", "input", "state", "attempts", "finished_at")),
        sa.column("result", sa.JSON()),
        *(sa.column(c) for c in ("label", "score", "answer", "start_char", "end_char", "entity_count")),
        *(sa.column(c) for c in ("error_code", "error_message", "vector")),
    )
    jobs = sa.table(
        "jobs",
        *(sa.column(c) for c in ("id", "task", "model", "params", "state", "queue", "chunk_size", "n_chunks")),
        *(sa.column(c) for c in ("total", "succeeded", "failed", "created_at", "finished_at", "tenant")),
    )
    stored: dict[str, dict[str, Any]] = {}
    with engine.begin() as conn:
        for n, (task, job_state, outcome) in enumerate(STORED_AT_0005):
            job_id = f"job{n:02d}"
            ended = outcome["state"] in ("succeeded", "failed")
            conn.execute(
                jobs.insert().values(
                    id=job_id,
                    task=task,
                    model="m",
                    params="{}",
                    state=job_state,
                    queue="q",
                    chunk_size=1,
                    n_chunks=1,
                    total=1,
                    succeeded=int(outcome["state"] == "succeeded"),
                    failed=int(outcome["state"] == "failed"),
                    created_at=T0,
                    finished_at=T0 if job_state != "running" else None,
                    tenant="default",
                )
            )
            row = {
                "client_id": f"c{n}",
                "input": {"text": f"t{n}"},
                "attempts": 2 if ended else 0,
                "finished_at": T0 if outcome["state"] != "queued" else None,
                **outcome,
            }
            conn.execute(items.insert().values(job_id=job_id, index=0, **{**row, "input": json.dumps(row["input"])}))
            stored[job_id] = row
    return stored


def assert_results_equal(engine: Engine, stored: dict[str, dict[str, Any]]) -> None:
    """Every item reads back (`items_with_results`, the store's read) as it was stored at 0005: its input, state,
    result, vector, typed columns, error, attempts and end time (a cancelled item's, its job's end)."""
    with Session(engine) as session:
        for job_id, want in stored.items():
            (item,) = items_with_results(session, job_id)
            got = {name: getattr(item, name) for name in want}
            got["state"] = item.state.value
            got["finished_at"] = as_utc(item.finished_at) if item.finished_at is not None else None
            if want["state"] == "cancelled":  # an item without a result: it ended with its job
                got["finished_at"] = T0
            if isinstance(got.get("vector"), memoryview):
                got["vector"] = bytes(got["vector"])
            assert got == want, job_id


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def test_0006_moves_every_result_of_every_task_and_downgrades_back(
    database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # Given a database at 0005 holding a result of every task, a failed item, a cancelled one and a queued one
    if database == "sqlite":
        settings = Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}")
        context = contextlib.nullcontext()
    else:
        context = fresh_postgres_database()
    with context as url:
        settings = Settings(database_url=url) if url else settings
        migrate.upgrade(settings, "0005")
        engine = make_engine(settings)
        try:
            stored = store_at_0005(engine)

            # When it is upgraded to the head
            migrate.upgrade(settings)

            # Then every item reads back equal, its result in the results table, and the items hold inputs only
            assert_results_equal(engine, stored)
            with engine.connect() as conn:
                moved = conn.execute(sa.text("SELECT count(*) FROM results")).scalar_one()
                item_columns = {c["name"] for c in sa.inspect(conn).get_columns("items")}
            assert moved == 8  # the succeeded and failed items; the cancelled and the queued one have none
            assert item_columns == {"job_id", "index", "client_id", "input"}
            assert schema_diff(settings) == []

            # And a downgrade gives the 0005 columns back, equal
            migrate.downgrade(settings, "0005")
            with engine.connect() as conn:
                for job_id, want in stored.items():
                    row = conn.execute(
                        sa.text(f"SELECT {', '.join(want)} FROM items WHERE job_id = :j"), {"j": job_id}
                    ).one()
                    got = dict(zip(want, row, strict=True))
                    got["input"] = json.loads(got["input"]) if isinstance(got["input"], str) else got["input"]
                    if isinstance(got.get("result"), str):
                        got["result"] = json.loads(got["result"])
                    if got.get("vector") is not None:
                        got["vector"] = bytes(got["vector"])
                    if got["finished_at"] is not None:
                        got["finished_at"] = as_utc(
                            dt.datetime.fromisoformat(got["finished_at"])
                            if isinstance(got["finished_at"], str)
                            else got["finished_at"]
                        )
                    assert got == want, job_id
        finally:
            engine.dispose()


# -- 0009: the dispatcher's row ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def test_0009_adds_the_dispatchers_row_and_downgrades_back(database: str, tmp_path: Path) -> None:
    from inferq.store.dispatch import last_round, record_round

    # Given a database at 0008
    sqlite = f"sqlite:///{tmp_path / 'm.db'}"
    with contextlib.nullcontext(sqlite) if database == "sqlite" else fresh_postgres_database() as url:
        settings = Settings(database_url=url)
        migrate.upgrade(settings, "0008")
        engine = make_engine(settings)
        try:

            def tables() -> set[str]:
                with engine.connect() as conn:
                    return set(sa.inspect(conn).get_table_names())

            assert "dispatcher_rounds" not in tables()

            # When it is upgraded (to the head: 0009 and the migrations after it)
            migrate.upgrade(settings)

            # Then the dispatcher's table is there, as the models describe it
            assert "dispatcher_rounds" in tables()
            assert schema_diff(settings) == []
            if database == "postgresql":
                # And a leader's rounds rewrite its one row (the dispatcher runs on PostgreSQL only)
                now = dt.datetime.now(dt.UTC)
                queues = {"q": {"window": 4, "waiting": 1, "running": 2, "held": 3, "held_by_cap": 0, "capped": []}}
                with Session(engine) as session, session.begin():
                    record_round(session, leader="h:1", leader_since=now, last_round=now, released=5, queues={})
                    record_round(session, leader="h:2", leader_since=now, last_round=now, released=1, queues=queues)
                with Session(engine) as session:
                    row, _ = last_round(session)
                    assert row is not None and (row.leader, row.released, row.queues) == ("h:2", 1, queues)
                    assert session.execute(sa.text("SELECT count(*) FROM dispatcher_rounds")).scalar_one() == 1

            # And a downgrade to 0008 takes it away
            migrate.downgrade(settings, "0008")
            assert "dispatcher_rounds" not in tables()
        finally:
            engine.dispose()


# -- 0010: batches validated in the background, files that expire ------------------------------------------------------


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def test_0010_keeps_every_batch_validated_and_every_file_unexpiring_and_downgrades_back(
    database: str, tmp_path: Path
) -> None:
    # Given a database at 0009 holding a file and a batch (validated in its request, as 0008 did)
    context = contextlib.nullcontext() if database == "sqlite" else fresh_postgres_database()
    with context as url:
        settings = Settings(database_url=url or f"sqlite:///{tmp_path / 'm.db'}")
        migrate.upgrade(settings, "0009")
        engine = make_engine(settings)
        try:
            with engine.begin() as conn:
                conn.execute(
                    sa.text(
                        "INSERT INTO openai_files (id, tenant, purpose, filename, bytes, lines, created_at)"
                        " VALUES ('file-1', 't', 'batch', 'in.jsonl', 10, 1, :t)"
                    ),
                    {"t": T0},
                )
                conn.execute(
                    sa.text(
                        "INSERT INTO openai_batches (id, tenant, endpoint, input_file_id, completion_window,"
                        " total_lines, bad_lines, one_item_per_line, created_at)"
                        " VALUES ('batch_1', 't', '/v1/embeddings', 'file-1', '24h', 1, 1, :yes, :t)"
                    ),
                    {"t": T0, "yes": True},
                )

            # When it is upgraded to the head
            migrate.upgrade(settings)

            # Then the batch counts as validated when it was created (not validating), leased by nobody
            with Session(engine) as session:
                batch = session.execute(
                    sa.text("SELECT validated_at, lease_owner, lease_until, output_expires_after FROM openai_batches")
                ).one()
                expires = session.execute(sa.text("SELECT expires_at FROM openai_files")).scalar_one()
            validated = batch[0] if isinstance(batch[0], dt.datetime) else dt.datetime.fromisoformat(batch[0])
            assert as_utc(validated) == T0 and tuple(batch[1:]) == (None, None, None)
            # And the file does not expire
            assert expires is None
            assert schema_diff(settings) == []

            # And a downgrade to 0009 keeps both rows, without the new columns
            migrate.downgrade(settings, "0009")
            with engine.connect() as conn:
                assert conn.execute(sa.text("SELECT count(*) FROM openai_batches")).scalar_one() == 1
                assert conn.execute(sa.text("SELECT count(*) FROM openai_files")).scalar_one() == 1
                columns = {c["name"] for c in sa.inspect(conn).get_columns("openai_batches")}
                file_columns = {c["name"] for c in sa.inspect(conn).get_columns("openai_files")}
            assert not columns & {"validated_at", "lease_owner", "lease_until", "webhook_url", "output_expires_after"}
            assert "expires_at" not in file_columns
        finally:
            engine.dispose()


# -- 0011: the (job, state) index of results only over failed ones; items without a foreign key ----------------------


def _result_indexes(engine: Engine) -> dict[str, list[str]]:
    """The results table's indexes (a connection of its own: SQLite's pooled one may hold the schema it first saw)."""
    fresh = sa.create_engine(engine.url)
    try:
        with fresh.connect() as conn:
            return {str(i["name"]): list(i["column_names"]) for i in sa.inspect(conn).get_indexes("results")}
    finally:
        fresh.dispose()


def _item_foreign_keys(engine: Engine) -> list[str]:
    fresh = sa.create_engine(engine.url)
    try:
        with fresh.connect() as conn:
            return [str(k["referred_table"]) for k in sa.inspect(conn).get_foreign_keys("items")]
    finally:
        fresh.dispose()


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def test_0011_keeps_every_result_indexes_failed_ones_only_drops_the_items_key_and_downgrades_back(
    database: str, tmp_path: Path
) -> None:
    # Given a database at 0010 holding a result of every task, a failed item among them
    if database == "sqlite":
        context: contextlib.AbstractContextManager[str | None] = contextlib.nullcontext(
            f"sqlite:///{tmp_path / 'm.db'}"
        )
    else:
        context = fresh_postgres_database()
    with context as url:
        assert url is not None
        settings = Settings(database_url=url)
        migrate.upgrade(settings, "0005")
        engine = make_engine(settings)
        try:
            stored = store_at_0005(engine)
            migrate.upgrade(settings, "0010")
            assert "ix_results_job_state" in _result_indexes(engine)
            assert _item_foreign_keys(engine) == ["jobs"]

            # When it is upgraded to 0011
            migrate.upgrade(settings, "0011")

            # Then every result reads back equal, the failed filter finds the failed one through the partial index
            assert_results_equal(engine, stored)
            indexes = _result_indexes(engine)
            assert "ix_results_job_state" not in indexes
            assert indexes["ix_results_job_failed"] == ["job_id", "error_code"]
            assert _item_foreign_keys(engine) == []  # no per-row check in a submit's COPY
            with engine.connect() as conn:
                failed = conn.execute(sa.text("SELECT count(*) FROM results WHERE state = 'failed'")).scalar_one()
                if database == "postgresql":
                    conn.execute(sa.text("SET enable_seqscan = off"))
                    plan = "\n".join(
                        conn.execute(
                            sa.text("EXPLAIN SELECT job_id FROM results WHERE job_id = 'x' AND state = 'failed'")
                        ).scalars()
                    )
                    assert "ix_results_job_failed" in plan, plan
            assert failed == 1
            assert schema_diff(settings) == []

            # And a downgrade gives the full index and the foreign key back, every result still equal
            migrate.downgrade(settings, "0010")
            assert _result_indexes(engine)["ix_results_job_state"] == ["job_id", "state"]
            assert _item_foreign_keys(engine) == ["jobs"]
            assert "ix_results_job_failed" not in _result_indexes(engine)
            assert_results_equal(engine, stored)
        finally:
            engine.dispose()
