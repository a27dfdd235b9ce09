"""Reading the SQL record back in fault tests: every item accounted for exactly once."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, delete, insert, select
from sqlalchemy.orm import Session

from inferq.db import make_engine
from inferq.schema import Chunk, Job, Result
from inferq.settings import Settings
from inferq.store.results import StoredItem, items_with_results

T = TypeVar("T")


def stored_items(session: Session | Connection, *job_ids: str) -> list[StoredItem]:
    """The items of ``job_ids`` with their results (`inferq.store.results.items_with_results`)."""
    if isinstance(session, Connection):
        with Session(session) as on_conn:
            return items_with_results(on_conn, *job_ids)
    return items_with_results(session, *job_ids)


def put_result(bind: Session | Connection, job_id: str, index: int, **columns: Any) -> None:
    """Store (or replace) the item's result row with ``columns`` (``state`` among them): what a worker's write
    leaves, set up by a test."""
    columns.setdefault("attempts", 1)
    bind.execute(delete(Result).where(Result.job_id == job_id, Result.index == index))
    bind.execute(insert(Result).values(job_id=job_id, index=index, **columns))


def wait_for(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Call ``probe`` until it returns something truthy; fail saying ``what`` was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Record:
    """The jobs, chunks and items of one database, read fresh each time."""

    def __init__(self, database_url: str) -> None:
        self.engine: Engine = make_engine(Settings(database_url=database_url))

    def close(self) -> None:
        self.engine.dispose()

    def job(self, job_id: str) -> Job:
        with Session(self.engine) as session:
            job = session.get(Job, job_id)
            assert job is not None, f"no job {job_id}"
            session.expunge(job)
            return job

    def chunks(self, job_id: str) -> list[Chunk]:
        with Session(self.engine) as session:
            rows = list(session.scalars(select(Chunk).where(Chunk.job_id == job_id).order_by(Chunk.seq)))
            session.expunge_all()
            return rows

    def items(self, job_id: str) -> list[StoredItem]:
        with self.engine.connect() as conn:
            return stored_items(conn, job_id)

    def batches(self, job_ids: list[str]) -> dict[str, int]:
        """Running batches among these jobs' chunks: leader (``job_id/seq``) → batch-mates running under it."""
        from sqlalchemy import func

        with Session(self.engine) as session:
            rows = session.execute(
                select(Chunk.leader, func.count())
                .where(Chunk.job_id.in_(job_ids), Chunk.state == "running", Chunk.leader.is_not(None))
                .group_by(Chunk.leader)
            ).all()
        return {leader: n for leader, n in rows}

    def running_chunk(self, job_id: str) -> Chunk | None:
        return next((c for c in self.chunks(job_id) if c.state == "running"), None)

    def assert_every_item_once(self, job_id: str, *, state: str = "succeeded") -> list[StoredItem]:
        """The job ended in ``state``; each item ended once, with a result or an error and never both, and the
        job's counters equal what the items say."""
        job = self.job(job_id)
        items = self.items(job_id)
        assert job.state == state, f"job {job_id} is {job.state}"
        assert len(items) == job.total
        assert [i.index for i in items] == list(range(job.total))
        succeeded = [i for i in items if i.state == "succeeded"]
        failed = [i for i in items if i.state == "failed"]
        for item in succeeded:
            assert item.result is not None and item.error_code is None and item.finished_at is not None, item.index
        for item in failed:
            assert item.result is None and item.error_code is not None and item.finished_at is not None, item.index
        if state != "cancelled":
            assert len(succeeded) + len(failed) == job.total, [i.index for i in items if i.state == "queued"]
            assert all(c.state == "done" for c in self.chunks(job_id))
        assert (job.succeeded, job.failed) == (len(succeeded), len(failed)), "job counters drifted from the items"
        return items
