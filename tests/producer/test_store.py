"""Storing a job: every input comes back exactly, on PostgreSQL (COPY) and on SQLite (INSERT)."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select

from inferq.constants import INSERT_BATCH_ROWS
from inferq.db import make_engine, make_sessionmaker
from inferq.errors import InvalidInput
from inferq.schema import Chunk, Item, Job, Result
from inferq.settings import Settings
from inferq.task_specs import TaskName
from producer.client import store_job
from producer.inputs import InputRecord

TRICKY = [
    "plain",
    "tab\there, newline\nthere, carriage\r\nreturn",
    "back\\slash \\N \\t and a \\",
    'quotes " and \' and {"json": [1, 2]}',
    "emoji 🤗👩‍💻 and CJK 東京 한국어",
    "\u0000 nul and \u2028 separators \u2029",
]


def round_trip(settings: Settings, copy: bool | None = None, streamed: bool = False) -> None:
    engine = make_engine(settings)
    sessions = make_sessionmaker(engine)
    job_id = uuid.uuid4().hex
    records = [
        InputRecord(line=i + 1, client_id=None if i % 2 else f"id-{i}", data={"text": t, "text_pair": t[::-1]})
        for i, t in enumerate(TRICKY * 50)
    ]
    # A list, or a stream of records read once with their count given (as a submitted file's second read)
    given = (r for r in records) if streamed else records
    total = len(records) if streamed else None
    with sessions.begin() as session:
        store_job(session, job_id, TaskName.CLASSIFICATION, "m", {"top_k": 1}, given, 64, "q", copy=copy, total=total)
    with sessions() as session:
        items = session.execute(
            select(Item.index, Item.client_id, Item.input).where(Item.job_id == job_id).order_by(Item.index)
        ).all()
        results = session.scalar(select(func.count()).select_from(Result).where(Result.job_id == job_id))
        chunks = session.scalars(select(Chunk).where(Chunk.job_id == job_id).order_by(Chunk.seq)).all()
        job = session.get(Job, job_id)
    engine.dispose()
    assert [(i, c, d) for i, c, d in items] == [(n, r.client_id, r.data) for n, r in enumerate(records)]
    assert results == 0  # every item queued: none has a result
    assert [(c.start, c.stop) for c in chunks] == [(s, min(s + 64, 300)) for s in range(0, 300, 64)]
    assert job is not None and (job.total, job.n_chunks, job.state) == (300, 5, "queued")


@pytest.mark.parametrize("streamed", [False, True], ids=["list", "stream"])
def test_sqlite_stores_every_input_exactly(sqlite_settings: Settings, streamed: bool) -> None:
    round_trip(sqlite_settings, streamed=streamed)


@pytest.mark.services
@pytest.mark.parametrize("streamed", [False, True], ids=["list", "stream"])
@pytest.mark.parametrize("copy", [None, False], ids=["copy-by-default", "insert"])
def test_postgres_stores_every_input_exactly(migrated_postgres: str, copy: bool | None, streamed: bool) -> None:
    round_trip(Settings(database_url=migrated_postgres), copy, streamed)


@pytest.mark.parametrize("count", [INSERT_BATCH_ROWS - 1, INSERT_BATCH_ROWS + 1], ids=["fewer", "more"])
def test_records_other_than_their_total_store_nothing(sqlite_settings: Settings, count: int) -> None:
    # Given a stream of records that turns out fewer or more than the total given
    engine = make_engine(sqlite_settings)
    sessions = make_sessionmaker(engine)
    records = (InputRecord(line=i + 1, client_id=None, data={"text": "t"}) for i in range(count))

    # When they are stored, Then the mismatch is refused and the transaction leaves nothing
    with pytest.raises(InvalidInput, match="changed while it was being stored"), sessions.begin() as session:
        store_job(session, "a" * 32, TaskName.CLASSIFICATION, "m", {}, records, 64, "q", total=INSERT_BATCH_ROWS)
    with sessions() as session:
        assert [session.scalar(select(func.count()).select_from(t)) for t in (Job, Chunk, Item)] == [0, 0, 0]
    engine.dispose()
