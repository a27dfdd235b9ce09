"""Storing a job: every input comes back exactly, on PostgreSQL (COPY) and on SQLite (INSERT)."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select

from inferq.db import make_engine, make_sessionmaker
from inferq.schema import Chunk, Item, Job
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


def round_trip(settings: Settings, copy: bool | None = None) -> None:
    engine = make_engine(settings)
    sessions = make_sessionmaker(engine)
    job_id = uuid.uuid4().hex
    records = [
        InputRecord(line=i + 1, client_id=None if i % 2 else f"id-{i}", data={"text": t, "text_pair": t[::-1]})
        for i, t in enumerate(TRICKY * 50)
    ]
    with sessions.begin() as session:
        store_job(session, job_id, TaskName.CLASSIFICATION, "m", {"top_k": 1}, records, 64, "q", copy=copy)
    with sessions() as session:
        items = session.execute(
            select(Item.index, Item.client_id, Item.input, Item.state).where(Item.job_id == job_id).order_by(Item.index)
        ).all()
        chunks = session.scalars(select(Chunk).where(Chunk.job_id == job_id).order_by(Chunk.seq)).all()
        job = session.get(Job, job_id)
    engine.dispose()
    assert [(i, c, d) for i, c, d, _ in items] == [(n, r.client_id, r.data) for n, r in enumerate(records)]
    assert {s for *_, s in items} == {"queued"}
    assert [(c.start, c.stop) for c in chunks] == [(s, min(s + 64, 300)) for s in range(0, 300, 64)]
    assert job is not None and (job.total, job.n_chunks, job.state) == (300, 5, "queued")


def test_sqlite_stores_every_input_exactly(sqlite_settings: Settings) -> None:
    round_trip(sqlite_settings)


@pytest.mark.services
@pytest.mark.parametrize("copy", [None, False], ids=["copy-by-default", "insert"])
def test_postgres_stores_every_input_exactly(migrated_postgres: str, copy: bool | None) -> None:
    round_trip(Settings(database_url=migrated_postgres), copy)
