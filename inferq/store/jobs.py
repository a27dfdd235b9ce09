"""The statements of a job's life on the producer's side: the quota check and the submit (the job, its chunks, its
items: COPY on PostgreSQL, batched INSERTs on SQLite), the enqueue bookkeeping, cancel, the read behind retry, and
the job reads behind status and the listing.

Every function takes the caller's session and sends its statements in the caller's transaction; none commits.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any, Protocol

from sqlalchemy import RowMapping, and_, func, insert, or_, select, text, update
from sqlalchemy.orm import Session

from inferq import constants
from inferq.errors import DatabaseUnavailable, JobNotFound, QuotaExceeded
from inferq.schema import DEFAULT_PRIORITY, Chunk, Item, Job, Result, Tenant, utcnow
from inferq.states import UNFINISHED_JOB_STATES, ChunkState, ItemState, JobState
from inferq.store.dialect import Dialect, dialect_of
from inferq.store.dispatch import wake_dispatcher
from inferq.store.locks import lock_chunks


class ItemInput(Protocol):
    """What an item is stored from: its ``id`` as given (or ``None``) and its validated input object."""

    @property
    def client_id(self) -> str | None: ...
    @property
    def data(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class NewJob:
    """A job's row as a submit stores it, before any of its items ran."""

    id: str
    task: str
    model: str
    params: dict[str, Any]
    queue: str
    chunk_size: int
    total: int
    batch_key: str | None
    tenant: str
    metadata: dict[str, str] | None = None
    webhook_url: str | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None
    retry_of: str | None = None
    #: 0 to 9, higher first within the tenant (`inferq.dispatcher`).
    priority: int = DEFAULT_PRIORITY
    #: When the job's completion window ends; ``None``: never.
    deadline_at: dt.datetime | None = None

    @property
    def n_chunks(self) -> int:
        """All chunks of ``chunk_size`` items but the last, which holds the rest."""
        return -(-self.total // self.chunk_size)


# -- reads -------------------------------------------------------------------------------------------------------------


def job_of(session: Session, job_id: str, tenant: str | None = None) -> Job:
    """The job ``job_id`` (of ``tenant`` only, when given), or `JobNotFound`: another tenant's job is not told apart
    from a job that does not exist."""
    job = session.get(Job, job_id)
    if job is None or (tenant is not None and job.tenant != tenant):
        raise JobNotFound(f"no job {job_id!r}")
    return job


def job_by_idempotency_key(session: Session, tenant: str, key: str) -> Job | None:
    """The job ``tenant`` made with the ``Idempotency-Key`` ``key``, if any."""
    return session.scalars(select(Job).where(Job.tenant == tenant, Job.idempotency_key == key)).one_or_none()


def list_jobs(
    session: Session,
    *,
    limit: int,
    tenant: str | None = None,
    state: JobState | None = None,
    task: str | None = None,
    model: str | None = None,
    metadata: dict[str, str] | None = None,
    after: Job | None = None,
) -> Sequence[Job]:
    """Jobs newest first (created, then id, descending), at most ``limit``, each filter applied when given: of
    ``tenant``, in ``state``, of ``task`` or ``model``, whose metadata hold every key-value of ``metadata``, and
    after the job ``after`` in that order (the cursor of a page)."""
    query = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
    if tenant is not None:
        query = query.where(Job.tenant == tenant)
    if state is not None:
        query = query.where(Job.state == state)
    if task is not None:
        query = query.where(Job.task == task)
    if model is not None:
        query = query.where(Job.model == model)
    for key, value in (metadata or {}).items():
        query = query.where(Job.meta[key].as_string() == value)
    if after is not None:
        query = query.where(
            or_(Job.created_at < after.created_at, and_(Job.created_at == after.created_at, Job.id < after.id))
        )
    return session.scalars(query).all()


def failed_inputs(session: Session, job_id: str) -> Sequence[RowMapping]:
    """The failed items of the job in input order, each as ``client_id`` and ``input``: what a retry submits."""
    return (
        session.execute(
            select(Item.client_id, Item.input)
            .join(Result, and_(Result.job_id == Item.job_id, Result.index == Item.index))
            .where(Result.job_id == job_id, Result.state == ItemState.FAILED)
            .order_by(Item.index)
        )
        .mappings()
        .all()
    )


def ping(session: Session) -> None:
    """One trivial statement: the database answers (readiness)."""
    session.execute(text("SELECT 1"))


# -- submit ------------------------------------------------------------------------------------------------------------


def check_quota(session: Session, tenant: str, adding: int) -> None:
    """`QuotaExceeded` when the tenant's unfinished items (of its queued and running jobs) plus ``adding`` would pass
    its ``max_queued_items``. Run in the transaction that stores the job: the tenant's row is locked (PostgreSQL;
    SQLite has one writer anyway), so two submits of one tenant cannot both pass the quota."""
    row = session.get(Tenant, tenant)
    if row is None or row.max_queued_items is None:
        return
    row = session.get(Tenant, tenant, with_for_update=True, populate_existing=True)
    if row is None or row.max_queued_items is None:
        return
    unfinished = session.scalar(
        select(func.coalesce(func.sum(Job.total - Job.succeeded - Job.failed), 0)).where(
            Job.tenant == tenant, Job.state.in_(UNFINISHED_JOB_STATES)
        )
    )
    if int(unfinished or 0) + adding > row.max_queued_items:
        raise QuotaExceeded(
            f"tenant {tenant!r} has {unfinished} unfinished items; {adding} more would pass its quota of "
            f"{row.max_queued_items}",
            retry_after=constants.QUOTA_RETRY_AFTER_SECONDS,
        )


def add_job(session: Session, job: NewJob) -> None:
    """Insert the job (queued) and its chunks, flushed; on PostgreSQL the dispatcher's leader is woken when the
    transaction commits (`inferq.store.dispatch.wake_dispatcher`: the dispatcher releases them; a ``direct``
    submit's notification finds nobody listening)."""
    session.add(
        Job(
            id=job.id,
            task=job.task,
            model=job.model,
            params=job.params,
            state=JobState.QUEUED,
            queue=job.queue,
            chunk_size=job.chunk_size,
            n_chunks=job.n_chunks,
            total=job.total,
            succeeded=0,
            failed=0,
            created_at=utcnow(),
            batch_key=job.batch_key,
            tenant=job.tenant,
            meta=job.metadata,
            webhook_url=job.webhook_url,
            idempotency_key=job.idempotency_key,
            request_hash=job.request_hash,
            retry_of=job.retry_of,
            priority=job.priority,
            deadline_at=job.deadline_at,
        )
    )
    session.flush()
    size = job.chunk_size
    session.execute(
        insert(Chunk),
        [
            {
                "job_id": job.id,
                "seq": seq,
                "start": seq * size,
                "stop": min(job.total, (seq + 1) * size),
                "state": ChunkState.QUEUED,
                "attempts": 0,
            }
            for seq in range(job.n_chunks)
        ],
    )
    wake_dispatcher(session)


def add_items(
    session: Session, job_id: str, numbered: Iterable[tuple[int, ItemInput]], *, copy: bool | None = None
) -> None:
    """Insert the job's items (their inputs), each with its index, read once from ``numbered``, in constant memory.

    ``copy``: stream them with COPY (PostgreSQL only, several times faster) or insert them in batches of
    `constants.INSERT_BATCH_ROWS`; ``None`` picks COPY on PostgreSQL."""
    if copy is None:
        copy = dialect_of(session) is Dialect.POSTGRESQL
    if copy:
        _copy_items(session, job_id, numbered)
        return
    rows = iter(numbered)
    while batch := [
        {"job_id": job_id, "index": i, "client_id": r.client_id, "input": r.data}
        for i, r in islice(rows, constants.INSERT_BATCH_ROWS)
    ]:
        session.execute(insert(Item), batch)


def _copy_items(session: Session, job_id: str, numbered: Iterable[tuple[int, ItemInput]]) -> None:
    """PostgreSQL: stream the items with COPY, in the session's transaction. An error while the rows are read ends
    the COPY with a failure, so that none of them is stored."""
    import psycopg  # the PostgreSQL driver: only here

    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    raw = session.connection().connection.driver_connection
    try:
        with (
            raw.cursor() as cursor,  # type: ignore[union-attr]
            cursor.copy('COPY items (job_id, "index", client_id, input) FROM STDIN') as copy,
        ):
            for i, r in numbered:
                copy.write_row((job_id, i, r.client_id, dumps(r.data)))
    except psycopg.OperationalError as exc:
        # The driver's own connection, under SQLAlchemy's error hook: converted here, as `inferq.db` does.
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise DatabaseUnavailable(f"database unreachable: {reason}", reason=reason, kind=type(exc).__name__) from exc


def mark_enqueued(session: Session, job_id: str, sent: int) -> None:
    """Stamp the job's first ``sent`` chunks as enqueued now (their messages are on the broker)."""
    session.execute(update(Chunk).where(Chunk.job_id == job_id, Chunk.seq < sent).values(enqueued_at=utcnow()))


# -- cancel and expiry ---------------------------------------------------------------------------------------------


def end_job(session: Session, job_id: str, state: JobState, now: dt.datetime) -> bool:
    """End the job early if it is unfinished: the job ``state`` (``cancelled`` or ``expired``), ended at ``now``. Its
    items without a result are ``cancelled`` or ``expired`` (error code ``expired``) from then on: an item's state
    follows its job's (`inferq.states.item_state_of`), so no item row is touched, whatever the job's size. Its chunks
    are locked first (`locks.lock_chunks`), which waits for any result write of them to commit; its chunks never
    released stay in SQL (the dispatcher sends chunks of unfinished jobs only), and a running chunk stops at its next
    micro-batch. True when the job was ended by this call; False when it had already ended. Ending it wakes the
    dispatcher's leader at commit: its released chunks no longer fill their queue's window nor its tenant's cap."""
    lock_chunks(session.connection(), Chunk.job_id == job_id)
    ended = session.execute(
        update(Job).where(Job.id == job_id, Job.state.in_(UNFINISHED_JOB_STATES)).values(state=state, finished_at=now)
    )
    if ended.rowcount:  # type: ignore[attr-defined]
        wake_dispatcher(session)
    return bool(ended.rowcount)  # type: ignore[attr-defined]


def cancel_job(session: Session, job_id: str, now: dt.datetime) -> bool:
    """Cancel the job if it is unfinished (`end_job` with ``cancelled``). True when the job was cancelled by this
    call; False when it had already ended."""
    return end_job(session, job_id, JobState.CANCELLED, now)
