"""Found by the chaos soak (issue 14): ``cancel`` on a job while a worker stores a chunk of it failed with
``deadlock detected`` on PostgreSQL. The write locks the chunk, then its items, then the job (`inferq.store.locks`); the
cancel locked the job, then the items: each waited for the other, and PostgreSQL broke the cycle by failing one.
The cancel now takes the job's chunks first, in the writers' order, and waits for the write instead."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from sqlalchemy import select, update

from inferq.db import make_engine, make_sessionmaker
from inferq.schema import Chunk, Item, Job
from inferq.settings import Settings
from inferq.task_specs import TaskName, validate_params
from producer.client import Client, store_job
from producer.inputs import InputRecord

pytestmark = pytest.mark.services


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
    in_chunk = (Item.job_id == job_id, Item.index < 4)

    # Given a worker storing chunk 0, in its locking order: the chunk row, then the chunk's items (still queued)
    writer = sessions()
    writer.begin()
    writer.execute(select(Chunk).where(Chunk.job_id == job_id, Chunk.seq == 0).with_for_update())
    writer.execute(select(Item.index).where(*in_chunk).order_by(Item.index).with_for_update())

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
    time.sleep(1.0)  # the cancel is now waiting for a lock the write holds

    # And the write goes on: its results, then the job's counters (the job row), and commits
    writer.execute(update(Item).where(*in_chunk).values(state="succeeded", result={"label": "x"}))
    writer.execute(update(Chunk).where(Chunk.job_id == job_id, Chunk.seq == 0).values(state="done"))
    writer.execute(update(Job).where(Job.id == job_id).values(succeeded=Job.succeeded + 4))
    writer.commit()
    writer.close()
    canceller.join(30)

    # Then both succeeded: the write's results stand, the cancel cancelled the rest
    assert outcome == ["cancelled"], outcome
    with sessions() as session:
        states = dict(session.execute(select(Item.index, Item.state).where(Item.job_id == job_id)).tuples().all())
        job = session.get(Job, job_id)
        assert job is not None and (job.state.value, job.succeeded) == ("cancelled", 4)
    assert [states[i].value for i in range(8)] == ["succeeded"] * 4 + ["cancelled"] * 4
    engine.dispose()
