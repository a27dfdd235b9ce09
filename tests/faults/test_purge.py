"""Issue 5, point 11: retention on PostgreSQL. ``inferq purge --older-than 30d`` deletes jobs that finished more
than 30 days ago, with their chunks and items, in batches of short transactions; running jobs are never touched,
never wait for it, and it never waits for them."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, text, update

from inferq.db import make_engine, make_sessionmaker
from inferq.schema import Chunk, Item, Job, Result, utcnow
from inferq.settings import Settings
from inferq.task_specs import TaskName
from producer.client import store_job
from producer.inputs import InputRecord
from tests.support.jobs import inferq_cli

pytestmark = pytest.mark.services


@pytest.fixture
def engine(migrated_postgres: str) -> Iterator[Engine]:
    eng = make_engine(Settings(database_url=migrated_postgres))
    yield eng
    eng.dispose()


def a_job(engine: Engine, n: int, state: str, finished_days_ago: float | None, created_days_ago: float = 40) -> str:
    job_id = uuid.uuid4().hex
    records = [InputRecord(line=i + 1, client_id=None, data={"text": f"t{i}"}) for i in range(n)]
    sessions = make_sessionmaker(engine)
    with sessions.begin() as session:
        store_job(session, job_id, TaskName.CLASSIFICATION, "m", {}, records, 500, "q")
        now = utcnow()
        finished = None if finished_days_ago is None else now - dt.timedelta(days=finished_days_ago)
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(state=state, finished_at=finished, created_at=now - dt.timedelta(days=created_days_ago))
        )
    return job_id


#: Every item of a job gets a result (as a worker's write leaves them).
GIVE_RESULTS = text(
    'INSERT INTO results (job_id, "index", state, result, attempts) '
    "SELECT job_id, \"index\", 'succeeded', '[]', 1 FROM items WHERE job_id = :j"
)


def counts(engine: Engine, job_id: str) -> tuple[int, int, int, int]:
    """The job's rows: job, chunks, items, results."""
    with engine.connect() as conn:
        return (
            conn.scalar(select(func.count()).select_from(Job).where(Job.id == job_id)) or 0,
            conn.scalar(select(func.count()).select_from(Chunk).where(Chunk.job_id == job_id)) or 0,
            conn.scalar(select(func.count()).select_from(Item).where(Item.job_id == job_id)) or 0,
            conn.scalar(select(func.count()).select_from(Result).where(Result.job_id == job_id)) or 0,
        )


def test_purge_deletes_old_finished_jobs_in_batches_and_never_touches_running_ones(
    engine: Engine, migrated_postgres: str
) -> None:
    # Given old finished jobs (one of 2,500 items, one cancelled), a recent finished job, and an old running job
    old = a_job(engine, 2500, "succeeded", finished_days_ago=40)
    old_cancelled = a_job(engine, 300, "cancelled", finished_days_ago=31)
    recent = a_job(engine, 10, "succeeded", finished_days_ago=1)
    running = a_job(engine, 600, "running", finished_days_ago=None)
    with engine.begin() as conn:
        for job_id in (old, recent):
            conn.execute(GIVE_RESULTS, {"j": job_id})
    env: dict[str, Any] = {"INFERQ_DATABASE_URL": migrated_postgres}

    # And a worker in the middle of writing the running job's results (its chunk and items locked)
    with engine.connect() as worker:
        worker.begin()
        worker.execute(select(Chunk).where(Chunk.job_id == running).with_for_update()).all()
        worker.execute(select(Item.index).where(Item.job_id == running).with_for_update()).all()

        # When purge runs with batches of 1,000 items
        started = time.monotonic()
        done = inferq_cli(env, "purge", "--older-than", "30d", "--batch-rows", "1000", "--json")
        took = time.monotonic() - started
        worker.rollback()

    # Then it deleted the old finished jobs, their chunks, items and results, 1,000 items a transaction at most
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert sorted(report["job_ids"]) == sorted([old, old_cancelled])
    assert (report["items"], report["batches"]) == (2800, 3 + 1)
    assert counts(engine, old) == counts(engine, old_cancelled) == (0, 0, 0, 0)
    # And it left the recent job and the running one whole, without waiting for the worker's locks
    assert counts(engine, recent) == (1, 1, 10, 10)
    assert counts(engine, running) == (1, 2, 600, 0)
    assert took < 30


def test_a_purge_batch_in_progress_does_not_lock_out_a_running_job(engine: Engine) -> None:
    # Given an old finished job being purged (a batch deleted, its transaction still open) and a running job
    old = a_job(engine, 1200, "succeeded", finished_days_ago=40)
    running = a_job(engine, 50, "running", finished_days_ago=None)
    with engine.connect() as purging:
        purging.begin()
        purging.execute(text("DELETE FROM items WHERE job_id = :j AND index < 1000"), {"j": old})

        # When a worker writes the running job's results meanwhile (giving up after 2 s if anything blocks it)
        with engine.connect() as worker:
            worker.begin()
            worker.execute(text("SET LOCAL lock_timeout = '2s'"))
            worker.execute(select(Chunk).where(Chunk.job_id == running).with_for_update()).all()
            worker.execute(GIVE_RESULTS, {"j": running})
            worker.execute(update(Job).where(Job.id == running).values(succeeded=Job.succeeded + 50))
            worker.commit()
        purging.rollback()

    # Then the worker's write went through
    with engine.begin() as conn:
        assert conn.scalar(select(Job.succeeded).where(Job.id == running)) == 50
        conn.execute(text("DELETE FROM jobs WHERE id = :j"), {"j": old})  # leave no old job to other tests
        conn.execute(text("DELETE FROM results WHERE job_id = :j"), {"j": old})
        conn.execute(text("DELETE FROM items WHERE job_id = :j"), {"j": old})  # no foreign key cascades to them


def test_purge_refuses_an_age_it_cannot_read(migrated_postgres: str) -> None:
    done = inferq_cli({"INFERQ_DATABASE_URL": migrated_postgres}, "purge", "--older-than", "soon")
    assert done.returncode == 2 and "error [invalid_parameter]" in done.stderr
    assert "'soon' is not an age" in done.stderr
