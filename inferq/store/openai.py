"""The statements of the OpenAI-compatible API (`server.openai`): its files' rows (their bytes lie in the files
directory), its batches' rows, and the reads that list them a page at a time, newest first, for one tenant.

A file or batch of another tenant is not found, exactly as one that does not exist (``tenant=None``: any tenant's,
for an admin key)."""

from __future__ import annotations

import datetime as dt
from typing import TypeVar

from sqlalchemy import Select, and_, delete, or_, select, update
from sqlalchemy.orm import Session

from inferq.errors import BatchNotFound, FileNotFound
from inferq.schema import Job, OpenAIBatch, OpenAIFile

#: A listed row: a file or a batch (both paged by ``created_at``, then ``id``).
_Row = TypeVar("_Row", OpenAIFile, OpenAIBatch)


def add_file(session: Session, row: OpenAIFile) -> None:
    session.add(row)
    session.flush()


def file_of(session: Session, file_id: str, tenant: str | None) -> OpenAIFile:
    """The file ``file_id`` of ``tenant`` (``None``: any tenant's), or `FileNotFound`."""
    row = session.get(OpenAIFile, file_id)
    if row is None or (tenant is not None and row.tenant != tenant):
        raise FileNotFound(f"No such File object: {file_id}")
    return row


def list_files(
    session: Session, tenant: str | None, *, limit: int, after: str | None, purpose: str | None
) -> list[OpenAIFile]:
    """Files newest first (created, then id, descending), after the file ``after`` in that order."""
    query = select(OpenAIFile)
    if tenant is not None:
        query = query.where(OpenAIFile.tenant == tenant)
    if purpose is not None:
        query = query.where(OpenAIFile.purpose == purpose)
    cursor = file_of(session, after, tenant) if after is not None else None
    return _newest_first(session, query, OpenAIFile, cursor, limit)


def delete_file(session: Session, file_id: str) -> None:
    session.execute(delete(OpenAIFile).where(OpenAIFile.id == file_id))


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


def mark_cancelling(session: Session, batch_id: str, now: dt.datetime) -> None:
    session.execute(
        update(OpenAIBatch)
        .where(OpenAIBatch.id == batch_id, OpenAIBatch.cancelling_at.is_(None))
        .values(cancelling_at=now)
    )


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
