"""Maintenance in SQL: recovery's reads and requeue bookkeeping (`inferq.recovery`), the purge of old finished jobs
(`inferq.retention`), and the state the metrics read on a scrape (`inferq.metrics.StateCollector`).

Recovery takes a lost chunk for re-enqueueing by one conditional UPDATE (`requeue_expired`, `mark_enqueued`), so
that of two reconcilers one sends its message; a send that fails gives the mark back (`clear_enqueued`). The purge
deletes a job's items in ranges of consecutive indices, one short transaction each, before its chunks and its row,
and only ever touches finished jobs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row, delete, func, select, update
from sqlalchemy.orm import Session

from inferq.schema import Chunk, Item, Job, Result, WebhookDelivery
from inferq.states import FINISHED_JOB_STATES, UNFINISHED_JOB_STATES, ChunkState, DeliveryState, JobState
from inferq.store.dispatch import wake_dispatcher

# -- recovery ------------------------------------------------------------------------------------------------------

#: A chunk `unfinished_chunks` read: ``job_id``, ``seq``, ``state``, ``lease_until``, ``enqueued_at``, its job's
#: ``queue`` and ``created_at``.
UnfinishedChunk = Row[str, int, ChunkState, dt.datetime | None, dt.datetime | None, str, dt.datetime]


def unfinished_chunks(
    session: Session, job_id: str | None = None, *, expired_before: dt.datetime | None = None
) -> Sequence[UnfinishedChunk]:
    """The queued and running chunks of unfinished jobs (of ``job_id`` alone, if given), in key order: their
    ``job_id``, ``seq``, ``state``, ``lease_until`` and ``enqueued_at``, and their job's ``queue`` and
    ``created_at``, read by name. With ``expired_before``, only the running ones whose lease ended before it (on
    the ``(state, lease_until)`` index)."""
    query = (
        select(
            Chunk.job_id,
            Chunk.seq,
            Chunk.state,
            Chunk.lease_until,
            Chunk.enqueued_at,
            Job.queue,
            Job.created_at,
        )
        .join(Job, Job.id == Chunk.job_id)
        .where(
            Job.state.in_(UNFINISHED_JOB_STATES),
            Chunk.state.in_([ChunkState.QUEUED, ChunkState.RUNNING]),
        )
        .order_by(Chunk.job_id, Chunk.seq)
    )
    if job_id is not None:
        query = query.where(Chunk.job_id == job_id)
    if expired_before is not None:
        query = query.where(
            Chunk.state == ChunkState.RUNNING,
            Chunk.lease_until.is_(None) | (Chunk.lease_until < expired_before),
        )
    return session.execute(query).all()


def requeue_expired(session: Session, job_id: str, seq: int, now: dt.datetime) -> bool:
    """A running chunk whose lease has expired by ``now`` goes back to ``queued``, leaderless, marked enqueued at
    ``now``: one conditional UPDATE, so that one process re-enqueues it. False: a worker, or another reconciler, got
    there first."""
    claimed = session.execute(
        update(Chunk)
        .where(Chunk.job_id == job_id, Chunk.seq == seq, Chunk.state == ChunkState.RUNNING)
        .where((Chunk.lease_until.is_(None)) | (Chunk.lease_until < now))
        .values(state=ChunkState.QUEUED, lease_until=None, worker=None, leader=None, enqueued_at=now)
    )
    return bool(claimed.rowcount)  # type: ignore[attr-defined]


def mark_enqueued(session: Session, job_id: str, seq: int, *, not_since: dt.datetime, now: dt.datetime) -> bool:
    """A queued chunk not enqueued since ``not_since`` (or never) is marked enqueued at ``now``: one conditional
    UPDATE, so that one process re-enqueues it. False: a worker, or another reconciler, got there first."""
    claimed = session.execute(
        update(Chunk)
        .where(Chunk.job_id == job_id, Chunk.seq == seq, Chunk.state == ChunkState.QUEUED)
        .where((Chunk.enqueued_at.is_(None)) | (Chunk.enqueued_at <= not_since))
        .values(enqueued_at=now)
    )
    return bool(claimed.rowcount)  # type: ignore[attr-defined]


def clear_enqueued(session: Session, job_id: str, seq: int) -> None:
    """The chunk's message could not be sent: it counts as never enqueued, and the next round tries again (the
    dispatcher's, under ``INFERQ_DISPATCH=fair``: woken at commit)."""
    session.execute(update(Chunk).where(Chunk.job_id == job_id, Chunk.seq == seq).values(enqueued_at=None))
    wake_dispatcher(session)


# -- retention ------------------------------------------------------------------------------------------------------


def finished_before(session: Session, cutoff: dt.datetime) -> Sequence[Row[str, int]]:
    """The jobs that finished before ``cutoff``, oldest first: their ``id`` and ``total``, read by name."""
    return session.execute(
        select(Job.id, Job.total)
        .where(Job.state.in_(FINISHED_JOB_STATES), Job.finished_at.is_not(None), Job.finished_at < cutoff)
        .order_by(Job.finished_at)
    ).all()


def delete_items(session: Session, job_id: str, start: int, stop: int) -> int:
    """Delete the job's items with an index in ``[start, stop)``, and their results; how many items there were."""
    session.execute(delete(Result).where(Result.job_id == job_id, Result.index >= start, Result.index < stop))
    deleted = session.execute(delete(Item).where(Item.job_id == job_id, Item.index >= start, Item.index < stop))
    return int(deleted.rowcount)  # type: ignore[attr-defined]


def delete_job(session: Session, job_id: str) -> None:
    """Delete the job's chunks, then its row if it is finished (its items are gone already: `delete_items`)."""
    session.execute(delete(Chunk).where(Chunk.job_id == job_id))
    session.execute(delete(Job).where(Job.id == job_id, Job.state.in_(FINISHED_JOB_STATES)))


# -- the gauges' reads -------------------------------------------------------------------------------------------


def jobs_by_state(session: Session) -> Sequence[Row[JobState, int]]:
    """How many jobs are in each state there is: ``state``, ``total``."""
    return session.execute(select(Job.state, func.count().label("total")).group_by(Job.state)).all()


def items_left(session: Session) -> Sequence[Row[str, str, int | None]]:
    """The items of unfinished jobs that have not ended, by the jobs' queue and model: ``queue``, ``model``,
    ``left``."""
    return session.execute(
        select(Job.queue, Job.model, func.sum(Job.total - Job.succeeded - Job.failed).label("left"))
        .where(Job.state.in_(UNFINISHED_JOB_STATES))
        .group_by(Job.queue, Job.model)
    ).all()


def oldest_waiting(session: Session) -> Sequence[Row[str, Any]]:
    """Per queue, since when its oldest queued chunk (of an unfinished job) has waited, its last enqueueing or else
    its job's creation: ``queue``, ``since`` (SQLite may hand it back as text)."""
    return session.execute(
        select(Job.queue, func.min(func.coalesce(Chunk.enqueued_at, Job.created_at)).label("since"))
        .join(Job, Job.id == Chunk.job_id)
        .where(Chunk.state == ChunkState.QUEUED, Job.state.in_(UNFINISHED_JOB_STATES))
        .group_by(Job.queue)
    ).all()


def deliveries_by_state(session: Session) -> Sequence[Row[DeliveryState, int]]:
    """How many webhook deliveries are in each state there is: ``state``, ``total``."""
    return session.execute(
        select(WebhookDelivery.state, func.count().label("total")).group_by(WebhookDelivery.state)
    ).all()
