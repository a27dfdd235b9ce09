"""The Python client: submit jobs, poll them, stream their results, cancel them.

client = Client(get_settings())
job = client.submit("classification", "sst2", "inputs.jsonl", params={"top_k": 2})
client.wait(job.job_id)
for row in client.results(job.job_id, min_score=0.9):
    ...
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Literal

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from inferq import constants
from inferq.db import make_engine, make_sessionmaker
from inferq.errors import BrokerUnavailable, DatabaseUnavailable, InvalidInput, JobNotFound, LineError
from inferq.model_sources import check_model, mask_tokens, resolve_model
from inferq.schema import Chunk, Item, Job, as_utc, utcnow
from inferq.settings import ModelSpec, Settings
from inferq.states import UNFINISHED_JOB_STATES, ChunkState, ItemState, JobState
from inferq.task_specs import RUN_CHUNK, TASKS, TaskName, batch_key, parse_task, read_params, validate_params
from producer.inputs import InputRecord, Limits, read_inputs, validate_rows
from producer.results import STORED_STATE, ResultFilter, ResultRow, item_rows

if TYPE_CHECKING:
    # Celery (and kombu) load when the client first sends, not for a status or a results read.
    from celery import Celery


@dataclass(frozen=True)
class Submission:
    job_id: str
    total: int
    chunks: int
    #: Lines left out with ``skip_invalid`` (at most `Limits.max_errors` of them listed).
    skipped: list[LineError] = field(default_factory=list)
    skipped_total: int = 0


@dataclass(frozen=True)
class JobStatus:
    id: str
    task: str
    model: str
    state: JobState
    total: int
    succeeded: int
    failed: int
    params: dict[str, Any]
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    error: dict[str, str] | None

    @property
    def done(self) -> int:
        return self.succeeded + self.failed

    @property
    def finished(self) -> bool:
        return self.state.finished

    @property
    def elapsed(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at or utcnow()
        return max((end - self.started_at).total_seconds(), 1e-9)

    @property
    def items_per_second(self) -> float | None:
        elapsed = self.elapsed
        return None if elapsed is None or self.done == 0 else self.done / elapsed

    def to_json(self) -> dict[str, Any]:
        def iso(t: dt.datetime | None) -> str | None:
            return t.isoformat() if t is not None else None

        return {
            "job_id": self.id,
            "task": self.task,
            "model": self.model,
            "state": self.state.value,
            "total": self.total,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "params": self.params,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "items_per_second": self.items_per_second,
            "error": self.error,
        }


Inputs = str | os.PathLike[str] | IO[bytes] | Iterable[dict[str, Any] | str]


class Client:
    """Talks to the database (the record) and the broker (to enqueue chunks). Imports no model code."""

    def __init__(
        self,
        settings: Settings,
        *,
        engine: Engine | None = None,
        celery: Celery | None = None,
    ) -> None:
        self.settings = settings
        self._engine = engine
        self._owns_engine = engine is None
        self._sessions: sessionmaker[Session] | None = None
        self._reader: sessionmaker[Session] | None = None
        self._celery = celery

    # -- plumbing --------------------------------------------------------------------------------------

    @property
    def sessions(self) -> sessionmaker[Session]:
        if self._sessions is None:
            if self._engine is None:
                self._engine = make_engine(self.settings)
            self._sessions = make_sessionmaker(self._engine)
        return self._sessions

    @property
    def reader(self) -> sessionmaker[Session]:
        """Sessions for reads (status, results): on SQLite they never hold the write lock."""
        if self._reader is None:
            self._reader = make_sessionmaker(self.sessions.kw["bind"], read_only=True)
        return self._reader

    @property
    def celery(self) -> Celery:
        if self._celery is None:
            from inferq.celery_app import create_celery

            self._celery = create_celery(self.settings, name="inferq-producer")
        return self._celery

    def close(self) -> None:
        if self._engine is not None and self._owns_engine:
            self._engine.dispose()
        self._engine = None
        self._sessions = None
        self._reader = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- submit ----------------------------------------------------------------------------------------

    def submit(
        self,
        task: TaskName | str,
        model: str,
        inputs: Inputs,
        params: dict[str, Any] | None = None,
        *,
        chunk_size: int | None = None,
        skip_invalid: bool = False,
        format: Literal["auto", "jsonl", "csv"] = "auto",
    ) -> Submission:
        """Validate everything, store the job and its items in one transaction, then enqueue one message per
        chunk. Bad input raises `InvalidInput` (every bad line, with line number and field) and stores nothing,
        unless ``skip_invalid``."""
        task = task if isinstance(task, TaskName) else parse_task(task)
        spec = resolve_model(self.settings, model, task)
        full_params = validate_params(task, dict(params or {}))
        typed = read_params(task, full_params)
        check_model(spec, task, typed)
        size = self.settings.chunk_size_for(chunk_size)
        limits = Limits(max_text_chars=self.settings.max_text_chars, max_items=self.settings.max_items)
        masks = mask_tokens(spec)
        if isinstance(inputs, str | os.PathLike) or hasattr(inputs, "read"):
            read = read_inputs(inputs, task, limits, format=format, mask_tokens=masks, params=typed)  # type: ignore[arg-type]
        else:
            read = validate_rows(enumerate(inputs, start=1), task, limits, mask_tokens=masks, params=typed)
        if read.errors and not skip_invalid:
            raise InvalidInput(read.errors, read.total_bad)
        if not read.records:
            raise InvalidInput([LineError(0, None, "no valid input lines"), *read.errors], max(1, read.total_bad))
        queue = self.settings.queue_of(spec)
        self._check_broker()
        job_id = uuid.uuid4().hex
        n_chunks = chunk_count(len(read.records), size)
        committing = False
        try:
            with self.sessions() as session, session.begin():
                store_job(session, job_id, task, model, full_params, read.records, size, queue)
                committing = True
        except DatabaseUnavailable as exc:
            # One transaction, and nothing is enqueued before it commits: a database that went away stored nothing,
            # unless it went away during the commit itself, when only the database knows.
            if committing:
                raise DatabaseUnavailable(
                    f"the database went away while committing job {job_id}, which may or may not be stored "
                    f"({exc.reason}); `inferq status {job_id}` tells, and `inferq recover` enqueues it if it is",
                    reason=exc.reason,
                    kind=exc.kind,
                ) from exc
            raise DatabaseUnavailable(
                f"database unreachable, nothing was submitted: {exc.reason}", reason=exc.reason, kind=exc.kind
            ) from exc
        self._enqueue(job_id, n_chunks, queue)
        return Submission(job_id, len(read.records), n_chunks, read.errors if skip_invalid else [], read.total_bad)

    def _check_broker(self) -> None:
        try:
            with self.celery.connection_for_write() as conn:
                conn.ensure_connection(max_retries=2, interval_start=0.2, interval_step=0.5, timeout=5)
        except Exception as exc:
            raise BrokerUnavailable(f"broker unreachable, nothing was submitted: {type(exc).__name__}: {exc}") from exc

    def _enqueue(self, job_id: str, n_chunks: int, queue: str) -> None:
        sent = 0
        try:
            with self.celery.producer_or_acquire() as producer:
                for seq in range(n_chunks):
                    self.celery.send_task(RUN_CHUNK, args=[job_id, seq], queue=queue, producer=producer)
                    sent += 1
        except Exception as exc:
            raise BrokerUnavailable(
                f"job {job_id} is stored but only {sent} of {n_chunks} chunks were enqueued "
                f"({type(exc).__name__}: {exc}); run `inferq recover` once the broker is back"
            ) from exc
        finally:
            if sent:
                with self.sessions.begin() as session:
                    session.execute(
                        update(Chunk).where(Chunk.job_id == job_id, Chunk.seq < sent).values(enqueued_at=utcnow())
                    )

    # -- read ------------------------------------------------------------------------------------------

    def status(self, job_id: str) -> JobStatus:
        with self.reader() as session:
            job = session.get(Job, job_id)
            if job is None:
                raise JobNotFound(f"no job {job_id!r}")
            return _status(job)

    def jobs(self, limit: int = 20, state: JobState | None = None) -> list[JobStatus]:
        with self.reader() as session:
            query = select(Job).order_by(Job.created_at.desc()).limit(limit)
            if state is not None:
                query = query.where(Job.state == state)
            return [_status(j) for j in session.scalars(query)]

    def models(self) -> dict[str, ModelSpec]:
        return dict(self.settings.models)

    def results(
        self,
        job_id: str,
        *,
        label: str | None = None,
        min_score: float | None = None,
        failed: bool = False,
        state: ItemState | None = None,
    ) -> Iterator[ResultRow]:
        """Stream the job's items in input order, filtered in SQL; never loads the job into memory. An embedding
        job's results carry their vectors, decoded from the stored bytes (`producer.vectors.exported`)."""
        from producer.vectors import exported  # numpy: only for results, not for a status read

        task = TaskName(self.status(job_id).task)  # raises JobNotFound
        with_vectors = TASKS[task].vectors
        columns: tuple[Any, ...] = (
            Item.index,
            Item.client_id,
            STORED_STATE,
            Item.result,
            Item.error_code,
            Item.error_message,
            Item.label,
            Item.score,
            Item.answer,
            Item.start_char,
            Item.end_char,
            Item.entity_count,
        )
        if with_vectors:
            columns += (Item.vector,)
        with self.reader() as session:
            rows = item_rows(session, job_id, columns, ResultFilter(label, min_score, failed, state))
            for r in rows:
                yield ResultRow(
                    index=r[0],
                    id=r[1],
                    status=r[2],
                    result=exported(r[3], r[12]) if with_vectors else r[3],
                    error={"code": r[4], "message": r[5] or ""} if r[4] is not None else None,
                    label=r[6],
                    score=r[7],
                    answer=r[8],
                    start=r[9],
                    end=r[10],
                    entity_count=r[11],
                    task=task,
                )

    # -- control ---------------------------------------------------------------------------------------

    def cancel(self, job_id: str) -> JobStatus:
        """Stop a job: unfinished items become ``cancelled``; a running chunk stops at its next micro-batch.
        Finished results stay."""
        now = utcnow()
        with self.sessions.begin() as session:
            if session.get(Job, job_id) is None:
                raise JobNotFound(f"no job {job_id!r}")
            # Locks in the order a worker's write takes them (`worker.claims`: chunks, then items, then the job),
            # so that a cancel never waits on a write that waits on it (a deadlock, which PostgreSQL breaks by
            # failing one of the two): the job's chunks first, which waits for any write of its chunks to commit.
            session.execute(
                select(Chunk.seq).where(Chunk.job_id == job_id).order_by(Chunk.job_id, Chunk.seq).with_for_update()
            )
            cancelled = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.state.in_(UNFINISHED_JOB_STATES))
                .values(state=JobState.CANCELLED, finished_at=now)
            )
            if cancelled.rowcount:  # type: ignore[attr-defined]
                session.execute(
                    update(Item)
                    .where(Item.job_id == job_id, Item.state == ItemState.QUEUED)
                    .values(state=ItemState.CANCELLED, finished_at=now)
                )
        return self.status(job_id)

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        poll: float = constants.DEFAULT_POLL_SECONDS,
        on_progress: Callable[[JobStatus], None] | None = None,
    ) -> JobStatus:
        """Poll until the job ends (or ``timeout`` seconds pass: `TimeoutError`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status(job_id)
            if on_progress is not None:
                on_progress(status)
            if status.finished:
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {status.state.value} after {timeout}s")
            time.sleep(poll)


def chunk_count(items: int, chunk_size: int) -> int:
    """How many chunks ``items`` items make: all of ``chunk_size`` items but the last, which holds the rest."""
    return -(-items // chunk_size)


def store_job(
    session: Session,
    job_id: str,
    task: TaskName,
    model: str,
    params: dict[str, Any],
    records: list[InputRecord],
    chunk_size: int,
    queue: str,
    *,
    copy: bool | None = None,
) -> None:
    """Insert the job, its chunks and its items (flushed, not committed: the caller's transaction decides).

    ``copy``: stream the items with COPY (PostgreSQL only) or insert them in batches; ``None`` picks COPY on
    PostgreSQL."""
    total = len(records)
    n_chunks = chunk_count(total, chunk_size)
    session.add(
        Job(
            id=job_id,
            task=task.value,
            model=model,
            params=params,
            state=JobState.QUEUED,
            queue=queue,
            chunk_size=chunk_size,
            n_chunks=n_chunks,
            total=total,
            succeeded=0,
            failed=0,
            created_at=utcnow(),
            batch_key=batch_key(task, model, params),
        )
    )
    session.flush()
    session.execute(
        insert(Chunk),
        [
            {
                "job_id": job_id,
                "seq": seq,
                "start": seq * chunk_size,
                "stop": min(total, (seq + 1) * chunk_size),
                "state": ChunkState.QUEUED,
                "attempts": 0,
            }
            for seq in range(n_chunks)
        ],
    )
    if copy is None:
        copy = session.get_bind().dialect.name == "postgresql"
    if copy:
        _copy_items(session, job_id, records)
        return
    for start in range(0, total, constants.INSERT_BATCH_ROWS):
        session.execute(
            insert(Item),
            [
                {
                    "job_id": job_id,
                    "index": start + i,
                    "client_id": r.client_id,
                    "input": r.data,
                    "state": ItemState.QUEUED,
                    "attempts": 0,
                }
                for i, r in enumerate(records[start : start + constants.INSERT_BATCH_ROWS])
            ],
        )


def _copy_items(session: Session, job_id: str, records: list[InputRecord]) -> None:
    """PostgreSQL: stream the items with COPY, in the session's transaction (several times faster than INSERT)."""
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    queued = ItemState.QUEUED.value
    raw = session.connection().connection.driver_connection
    with (
        raw.cursor() as cursor,  # type: ignore[union-attr]
        cursor.copy('COPY items (job_id, "index", client_id, input, state, attempts) FROM STDIN') as copy,
    ):
        for i, r in enumerate(records):
            copy.write_row((job_id, i, r.client_id, dumps(r.data), queued, 0))


def _status(job: Job) -> JobStatus:
    return JobStatus(
        id=job.id,
        task=job.task,
        model=job.model,
        state=job.state,
        total=job.total,
        succeeded=job.succeeded,
        failed=job.failed,
        params=dict(job.params),
        created_at=as_utc(job.created_at),
        started_at=as_utc(job.started_at),
        finished_at=as_utc(job.finished_at),
        error={"code": job.error_code, "message": job.error or ""} if job.error_code else None,
    )
