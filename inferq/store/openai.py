"""The statements of the OpenAI-compatible API (`server.openai`): its files' rows (their bytes lie in the files
directory), its batches' rows, and the reads that list them a page at a time, newest first, for one tenant.

A file or batch of another tenant is not found, exactly as one that does not exist (``tenant=None``: any tenant's,
for an admin key); so is an expired file (its ``expires_at`` passed), until the purge deletes it.

A batch being validated is leased by one server process (``lease_owner``, ``lease_until``): every change of a
validating batch is one conditional UPDATE on its owner, so that of two processes one wins (`renew_lease`,
`take_over`, `end_validation`; `take_over_expired` skips rows another transaction holds, ``FOR UPDATE SKIP
LOCKED`` on PostgreSQL, where SQLite, one writer at a time, needs nothing)."""

from __future__ import annotations

import datetime as dt
from typing import Any, TypeVar

from sqlalchemy import Select, and_, delete, or_, select, update
from sqlalchemy.orm import Session

from inferq.errors import BatchNotFound, FileNotFound
from inferq.schema import Job, OpenAIBatch, OpenAIFile, as_utc, utcnow

#: A listed row: a file or a batch (both paged by ``created_at``, then ``id``).
_Row = TypeVar("_Row", OpenAIFile, OpenAIBatch)


def add_file(session: Session, row: OpenAIFile) -> None:
    session.add(row)
    session.flush()


def file_of(session: Session, file_id: str, tenant: str | None) -> OpenAIFile:
    """The file ``file_id`` of ``tenant`` (``None``: any tenant's), or `FileNotFound` (an expired file too)."""
    row = session.get(OpenAIFile, file_id)
    if row is None or (tenant is not None and row.tenant != tenant) or _expired(row, utcnow()):
        raise FileNotFound(f"No such File object: {file_id}")
    return row


def _expired(row: OpenAIFile, now: dt.datetime) -> bool:
    return row.expires_at is not None and as_utc(row.expires_at) <= now


def list_files(
    session: Session, tenant: str | None, *, limit: int, after: str | None, purpose: str | None
) -> list[OpenAIFile]:
    """Files newest first (created, then id, descending), after the file ``after`` in that order."""
    query = select(OpenAIFile).where(or_(OpenAIFile.expires_at.is_(None), OpenAIFile.expires_at > utcnow()))
    if tenant is not None:
        query = query.where(OpenAIFile.tenant == tenant)
    if purpose is not None:
        query = query.where(OpenAIFile.purpose == purpose)
    cursor = file_of(session, after, tenant) if after is not None else None
    return _newest_first(session, query, OpenAIFile, cursor, limit)


def delete_file(session: Session, file_id: str) -> None:
    session.execute(delete(OpenAIFile).where(OpenAIFile.id == file_id))


def expired_files(session: Session, now: dt.datetime, limit: int) -> list[str]:
    """Ids of at most ``limit`` files that expired by ``now``, soonest expired first (on their index)."""
    query = (
        select(OpenAIFile.id)
        .where(OpenAIFile.expires_at.is_not(None), OpenAIFile.expires_at <= now)
        .order_by(OpenAIFile.expires_at, OpenAIFile.id)
        .limit(limit)
    )
    return list(session.scalars(query))


def delete_expired_files(session: Session, file_ids: list[str], now: dt.datetime) -> list[str]:
    """Delete the rows of those of ``file_ids`` that expired by ``now``: the ids deleted (their bytes are the
    caller's to remove, after the commit)."""
    if not file_ids:
        return []
    deleted = session.execute(
        delete(OpenAIFile)
        .where(OpenAIFile.id.in_(file_ids), OpenAIFile.expires_at.is_not(None), OpenAIFile.expires_at <= now)
        .returning(OpenAIFile.id)
    )
    return list(deleted.scalars())


def add_batch(session: Session, row: OpenAIBatch) -> None:
    session.add(row)
    session.flush()


def batch_of(session: Session, batch_id: str, tenant: str | None) -> OpenAIBatch:
    """The batch ``batch_id`` of ``tenant`` (``None``: any tenant's), or `BatchNotFound`."""
    row = session.get(OpenAIBatch, batch_id)
    if row is None or (tenant is not None and row.tenant != tenant):
        raise BatchNotFound(f"No such Batch object: {batch_id}")
    return row


def batch_with_job(session: Session, batch_id: str, tenant: str | None) -> tuple[OpenAIBatch, Job | None]:
    """The batch and its job (``None`` when no line of it was valid)."""
    batch = batch_of(session, batch_id, tenant)
    job = session.get(Job, batch.job_id) if batch.job_id is not None else None
    return batch, job


def list_batches(session: Session, tenant: str | None, *, limit: int, after: str | None) -> list[OpenAIBatch]:
    """Batches newest first (created, then id, descending), after the batch ``after`` in that order."""
    query = select(OpenAIBatch)
    if tenant is not None:
        query = query.where(OpenAIBatch.tenant == tenant)
    cursor = batch_of(session, after, tenant) if after is not None else None
    return _newest_first(session, query, OpenAIBatch, cursor, limit)


def _newest_first(
    session: Session, query: Select[_Row], model: type[_Row], cursor: _Row | None, limit: int
) -> list[_Row]:
    """``query``'s rows newest first (created, then id, descending), at most ``limit``, after ``cursor`` in that
    order (OpenAI's ``after`` paging)."""
    if cursor is not None:
        query = query.where(
            or_(
                model.created_at < cursor.created_at,
                and_(model.created_at == cursor.created_at, model.id < cursor.id),
            )
        )
    return list(session.scalars(query.order_by(model.created_at.desc(), model.id.desc()).limit(limit)))


def mark_cancelling(session: Session, batch_id: str, now: dt.datetime) -> str | None:
    """Cancel the batch: one still validating is cancelled at once, without a job (its validator's
    `end_validation` then finds it validated and stores nothing); one with a job is ``cancelling`` until the job
    ends. A batch that failed in validation stays failed. The batch's job (``None``: none), read after the
    change, so that a job made by a validation that ended meanwhile is not missed."""
    session.execute(
        update(OpenAIBatch)
        .where(OpenAIBatch.id == batch_id, OpenAIBatch.validated_at.is_(None))
        .values(cancelling_at=now, validated_at=now, finalized_at=now, lease_owner=None, lease_until=None)
    )
    session.execute(
        update(OpenAIBatch)
        .where(OpenAIBatch.id == batch_id, OpenAIBatch.job_id.is_not(None), OpenAIBatch.cancelling_at.is_(None))
        .values(cancelling_at=now)
    )
    return session.scalar(select(OpenAIBatch.job_id).where(OpenAIBatch.id == batch_id))


# -- validation: one process's lease on a batch ---------------------------------------------------------------------


def _validating(batch_id: str, owner: str) -> Any:
    """The batch ``batch_id``, still validating, leased by ``owner``."""
    return and_(OpenAIBatch.id == batch_id, OpenAIBatch.validated_at.is_(None), OpenAIBatch.lease_owner == owner)


def renew_lease(session: Session, batch_id: str, owner: str, until: dt.datetime) -> bool:
    """``owner``'s lease on the validating batch holds until ``until``; ``False`` when ``owner`` no longer holds
    it (the batch was cancelled, or another process took it over), and nothing changes."""
    done = session.execute(update(OpenAIBatch).where(_validating(batch_id, owner)).values(lease_until=until))
    return bool(done.rowcount)  # type: ignore[attr-defined]


def take_over(session: Session, batch_id: str, owner: str, now: dt.datetime, until: dt.datetime) -> bool:
    """``owner`` takes the validating batch whose lease ended by ``now``: ``False`` when it is not one (validated,
    leased, or taken by another process first)."""
    done = session.execute(
        update(OpenAIBatch)
        .where(OpenAIBatch.id == batch_id, OpenAIBatch.validated_at.is_(None), OpenAIBatch.lease_until < now)
        .values(lease_owner=owner, lease_until=until)
    )
    return bool(done.rowcount)  # type: ignore[attr-defined]


def take_over_expired(session: Session, owner: str, now: dt.datetime, until: dt.datetime, limit: int) -> list[str]:
    """``owner`` takes at most ``limit`` validating batches whose lease ended by ``now`` (oldest lease first),
    skipping those another transaction holds: their ids."""
    query = (
        select(OpenAIBatch.id)
        .where(OpenAIBatch.validated_at.is_(None), OpenAIBatch.lease_until < now)
        .order_by(OpenAIBatch.lease_until)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return [batch_id for batch_id in session.scalars(query) if take_over(session, batch_id, owner, now, until)]


def lease_ended(session: Session, batch_id: str, now: dt.datetime) -> bool:
    """Whether the batch is validating and its validator's lease ended by ``now`` (its process died)."""
    until = session.scalar(
        select(OpenAIBatch.lease_until).where(OpenAIBatch.id == batch_id, OpenAIBatch.validated_at.is_(None))
    )
    return until is not None and as_utc(until) < now


def end_validation(
    session: Session,
    batch_id: str,
    owner: str,
    *,
    job_id: str | None,
    total_lines: int,
    bad_lines: int,
    one_item_per_line: bool,
    errors: list[Any] | None,
    now: dt.datetime,
    finalized: bool = False,
) -> bool:
    """``owner`` ends its validation of the batch: its job (``None``: the batch failed), its lines' counts and
    the refused ones (``finalized``: a batch-wide error, without output files). ``False`` when ``owner`` no longer
    holds the batch (cancelled, or taken over), and nothing is written: the caller's transaction, which stored the
    job, is to roll back."""
    done = session.execute(
        update(OpenAIBatch)
        .where(_validating(batch_id, owner))
        .values(
            job_id=job_id,
            total_lines=total_lines,
            bad_lines=bad_lines,
            one_item_per_line=one_item_per_line,
            errors=errors,
            validated_at=now,
            finalized_at=now if finalized else None,
            lease_owner=None,
            lease_until=None,
        )
    )
    return bool(done.rowcount)  # type: ignore[attr-defined]


def finalize_batch(
    session: Session,
    batch_id: str,
    *,
    files: list[OpenAIFile],
    output_file_id: str | None,
    error_file_id: str | None,
    completed: int,
    failed: int,
    now: dt.datetime,
) -> bool:
    """Record the batch's output and error files (their rows added), unless another process recorded its own
    first: ``False`` then, and nothing is written (the caller removes its files)."""
    done = session.execute(
        update(OpenAIBatch)
        .where(OpenAIBatch.id == batch_id, OpenAIBatch.finalized_at.is_(None))
        .values(
            output_file_id=output_file_id,
            error_file_id=error_file_id,
            completed_lines=completed,
            failed_lines=failed,
            finalized_at=now,
        )
    )
    if done.rowcount != 1:  # type: ignore[attr-defined]
        return False
    for row in files:
        session.add(row)
    session.flush()
    return True
