"""Found by the chaos soak (issue 14): ``cancel`` on a job while a worker stores a chunk of it failed with
``deadlock detected`` on PostgreSQL. The write locks the chunk, then its items, then the job (`inferq.store.locks`); the
cancel locked the job, then the items: each waited for the other, and PostgreSQL broke the cycle by failing one.
The cancel now takes the job's chunks first, in the writers' order, and waits for the write instead."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from sqlalchemy import Engine, select, text, update

from inferq.db import make_engine, make_sessionmaker
from inferq.schema import Chunk, Job
from inferq.settings import Settings
from inferq.task_specs import TaskName, validate_params
from producer.client import Client, store_job
from producer.inputs import InputRecord
from tests.support.records import put_result, stored_items

pytestmark = pytest.mark.services

#: Seconds the cancel may take to reach the write's lock: it connects and reads the job first.
BLOCKED_WITHIN = 30.0


def wait_until_blocked_by(engine: Engine, pid: int, alive: threading.Thread) -> None:
    """Poll ``pg_locks`` until a session waits for a lock that the backend ``pid`` holds (`BLOCKED_WITHIN`)."""
    deadline = time.monotonic() + BLOCKED_WITHIN
    query = text(
        "SELECT count(*) FROM pg_locks WHERE NOT granted AND CAST(:pid AS integer) = ANY(pg_blocking_pids(pid))"
    )
    with engine.connect() as conn:
        while conn.execute(query, {"pid": pid}).scalar_one() == 0:
            assert alive.is_alive(), "the cancel ended without waiting for the write's lock"
            assert time.monotonic() < deadline, f"no session waited for the write's locks in {BLOCKED_WITHIN}s"
            conn.rollback()  # a fresh snapshot of pg_locks each time round
            time.sleep(0.02)


def test_a_cancel_during_a_chunks_write_waits_for_it_instead_of_deadlocking(migrated_postgres: str) -> None:
    settings = Settings(database_url=migrated_postgres)
    engine = make_engine(settings)
    sessions = make_sessionmaker(engine)
    job_id = uuid.uuid4().hex
    records = [InputRecord(line=i + 1, client_id=None, data={"text": f"t{i}"}) for i in range(8)]
    params = validate_params(TaskName.CLASSIFICATION, {})
    with sessions.begin() as session:
        store_job(session, job_id, TaskName.CLASSIFICATION, "m", params, records, 4, "q")
        session.execute(update(Job).where(Job.id == job_id).values(state="running"))

    # Given a worker storing chunk 0, in its locking order: the chunk row first
    writer = sessions()
    writer.begin()
    writer_pid = writer.execute(text("SELECT pg_backend_pid()")).scalar_one()
    writer.execute(select(Chunk).where(Chunk.job_id == job_id, Chunk.seq == 0).with_for_update())

    # When the job is cancelled meanwhile
    outcome: list[object] = []

    def cancel() -> None:
        try:
            with Client(settings) as client:
                outcome.append(client.cancel(job_id).state.value)
        except Exception as exc:
            outcome.append(exc)

    canceller = threading.Thread(target=cancel)
    canceller.start()
    # (it waits for a lock the write holds, as pg_locks shows, before the write goes on)
    wait_until_blocked_by(engine, writer_pid, canceller)

    # And the write goes on: its results, then the job's counters (the job row), and commits
    for index in range(4):
        put_result(writer, job_id, index, state="succeeded", result={"label": "x"})
    writer.execute(update(Chunk).where(Chunk.job_id == job_id, Chunk.seq == 0).values(state="done"))
    writer.execute(update(Job).where(Job.id == job_id).values(succeeded=Job.succeeded + 4))
    writer.commit()
    writer.close()
    canceller.join(30)

    # Then both succeeded: the write's results stand, the cancel cancelled the rest
    assert outcome == ["cancelled"], outcome
    with sessions() as session:
        states = {item.index: item.state for item in stored_items(session, job_id)}
        job = session.get(Job, job_id)
        assert job is not None and (job.state.value, job.succeeded) == ("cancelled", 4)
    assert [states[i].value for i in range(8)] == ["succeeded"] * 4 + ["cancelled"] * 4
    engine.dispose()
