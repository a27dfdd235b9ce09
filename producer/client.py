"""The Python client: submit jobs, poll them, stream their results, cancel them.

client = Client(get_settings())
job = client.submit("classification", "sst2", "inputs.jsonl", params={"top_k": 2})
client.wait(job.job_id)
for row in client.results(job.job_id, min_score=0.9):
    ...

What only submitting, cancelling or reading results needs (the task table, the input reader, the webhooks, the
result filters) is imported in the methods that use it, so that `inferq status` (one row read) does not pay for it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

from sqlalchemy import Engine, Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from inferq import api, constants
from inferq.db import make_engine, make_sessionmaker
from inferq.errors import (
    BrokerUnavailable,
    DatabaseUnavailable,
    IdempotencyConflict,
    InvalidInput,
    InvalidParameter,
    JobNotFinished,
    JobNotFound,
    LineError,
    NothingToRetry,
)
from inferq.schema import DEFAULT_PRIORITY, DEFAULT_TENANT, Job, as_utc, utcnow
from inferq.settings import ModelSpec, Settings
from inferq.states import ItemState, JobState
from inferq.store import jobs as stored
from inferq.task_names import TaskName

if TYPE_CHECKING:
    # Celery (and kombu) load when the client first sends, not for a status or a results read.
    from celery import Celery

    from producer.inputs import InputRecord
    from producer.protocol import Exported, ExportFormat
    from producer.results import ResultRow


@dataclass(frozen=True)
class JobOptions:
    """What a job carries besides its task, model, parameters and inputs: its owner and the HTTP API's extras."""

    #: The tenant that owns the job (the HTTP API sets the key's tenant).
    tenant: str = DEFAULT_TENANT
    #: Free-form string key-values, stored and returned as given (`check_metadata`'s limits).
    metadata: dict[str, str] | None = None
    #: Where the job's end event is POSTed.
    webhook_url: str | None = None
    #: The request's ``Idempotency-Key`` and a digest of the request (see `Job.idempotency_key`).
    idempotency_key: str | None = None
    request_hash: str | None = None
    #: The job whose failed items this job retries.
    retry_of: str | None = None
    #: 0 to 9: within its tenant, a job of higher priority gets the workers first (`inferq.dispatcher`).
    priority: int = DEFAULT_PRIORITY
    #: The job's completion window: items not done this long after the submit end ``expired``, and the job with
    #: them; ``None``: no deadline.
    deadline: dt.timedelta | None = None


def check_priority(priority: Any) -> int:
    """A job's priority: an integer from `constants.MIN_PRIORITY` to `constants.MAX_PRIORITY`."""
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidParameter("priority must be an integer from 0 to 9", field="priority")
    if not constants.MIN_PRIORITY <= priority <= constants.MAX_PRIORITY:
        raise InvalidParameter(
            f"priority must be from {constants.MIN_PRIORITY} to {constants.MAX_PRIORITY}", field="priority"
        )
    return priority


def parse_deadline(value: Any) -> dt.timedelta | None:
    """A completion window: a `datetime.timedelta`, seconds (a number, or digits), or digits with a unit of ``s``,
    ``m``, ``h`` or ``d`` (``"24h"``, ``"90m"``); between a second and `constants.MAX_DEADLINE_SECONDS`. ``None``
    (or ``""``): no deadline."""
    if value is None or value == "":
        return None
    if isinstance(value, dt.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DEADLINE.fullmatch(value.strip())):
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2) or "s"]
    else:
        raise InvalidParameter('deadline is seconds, or a number with s, m, h or d ("24h")', field="deadline")
    if not 1 <= seconds <= constants.MAX_DEADLINE_SECONDS:
        raise InvalidParameter(
            f"deadline must be from 1 second to {constants.MAX_DEADLINE_SECONDS // 86400} days", field="deadline"
        )
    return dt.timedelta(seconds=seconds)


_DEADLINE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def check_metadata(metadata: Any) -> dict[str, str] | None:
    """A job's metadata as stored: at most `constants.MAX_METADATA_KEYS` string keys of at most
    `constants.MAX_METADATA_KEY_CHARS` characters, with string values of at most `constants.MAX_METADATA_VALUE_CHARS`
    (`InvalidParameter` naming the key otherwise). ``None`` and ``{}`` store nothing."""
    if metadata is None or metadata == {}:
        return None
    if not isinstance(metadata, dict):
        raise InvalidParameter("metadata must be an object of string keys and string values", field="metadata")
    if len(metadata) > constants.MAX_METADATA_KEYS:
        raise InvalidParameter(f"metadata holds at most {constants.MAX_METADATA_KEYS} keys", field="metadata")
    for key, value in metadata.items():
        if not isinstance(key, str) or not key or len(key) > constants.MAX_METADATA_KEY_CHARS:
            raise InvalidParameter(
                f"metadata keys are strings of 1 to {constants.MAX_METADATA_KEY_CHARS} characters", field="metadata"
            )
        if not isinstance(value, str) or len(value) > constants.MAX_METADATA_VALUE_CHARS:
            raise InvalidParameter(
                f"metadata[{key!r}] must be a string of at most {constants.MAX_METADATA_VALUE_CHARS} characters",
                field=f"metadata.{key}",
            )
    return dict(metadata)


@dataclass(frozen=True)
class Submission:
    job_id: str
    total: int
    chunks: int
    #: Lines left out with ``skip_invalid`` (at most `Limits.max_errors` of them listed).
    skipped: list[LineError] = field(default_factory=list)
    skipped_total: int = 0
    #: True when the submit found the job its ``Idempotency-Key`` made before (same request): nothing new stored.
    replayed: bool = False


#: A job's status: the API's `Job`, one representation for `Client`, `RemoteClient` and the HTTP API.
JobStatus = api.Job


Inputs = str | os.PathLike[str] | IO[bytes] | Iterable[dict[str, Any] | str]


class Client:
    """Talks to the database (the record) and the broker (to enqueue chunks). Imports no model code.

    It implements `producer.protocol.JobClient`, as `RemoteClient` does; its ``tenant=`` keywords (status, jobs,
    cancel, retry) are its own: over HTTP the key's tenant decides."""

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
        options: JobOptions | None = None,
        on_store: Callable[[Session, str], None] | None = None,
    ) -> Submission:
        """Validate everything, store the job and its items in one transaction, then enqueue one message per
        chunk (on SQLite; on PostgreSQL the workers' dispatcher sends them, in fair order: `inferq.dispatcher`). Bad input raises `InvalidInput` (every bad line, with line number and field) and stores nothing,
        unless ``skip_invalid``.

        A file (a path, or a seekable stream: standard input redirected from a file is one) is read twice, in
        constant memory: once to validate every line (keeping only the errors and the count), then, when it is to be
        stored, again, each valid record going straight into the database. Other inputs (a pipe, Python objects)
        are validated into a list first, so their memory grows with their size. A file whose count of valid lines
        changes between the two reads is refused (`InvalidInput`) and nothing is stored.

        ``on_store(session, job_id)`` runs in the job's transaction once its rows are written: what must commit with
        the job or not at all (a batch of the OpenAI-compatible API records its job there); what it raises rolls
        the job back and propagates."""
        from inferq.model_sources import check_model, mask_tokens, resolve_model
        from inferq.task_specs import parse_task, read_params, validate_params
        from inferq.webhooks import check_url
        from producer.inputs import Limits, iter_inputs, open_input, read_inputs, scan_inputs, validate_rows

        task = task if isinstance(task, TaskName) else parse_task(task)
        options = options or JobOptions()
        options = dataclasses.replace(
            options, metadata=check_metadata(options.metadata), priority=check_priority(options.priority)
        )
        replayed = self._replayed(options)
        if replayed is not None:
            return replayed
        if options.webhook_url is not None:
            check_url(options.webhook_url, self.settings)  # before anything is stored
        spec = resolve_model(self.settings, model, task)
        full_params = validate_params(task, dict(params or {}))
        typed = read_params(task, full_params)
        check_model(spec, task, typed)
        size = self.settings.chunk_size_for(chunk_size, spec)
        limits = Limits(max_text_chars=self.settings.max_text_chars, max_items=self.settings.max_items)
        masks = mask_tokens(spec)
        with ExitStack() as stack:
            records: Iterable[InputRecord]
            if isinstance(inputs, str | os.PathLike) or hasattr(inputs, "read"):
                stream, fmt = stack.enter_context(open_input(inputs, format))  # type: ignore[arg-type]
                if _seekable(stream):
                    start = stream.tell()
                    scan = scan_inputs(stream, task, limits, format=fmt, mask_tokens=masks, params=typed)
                    errors, total_bad, total = scan.errors, scan.total_bad, scan.valid
                    stream.seek(start)
                    records = iter_inputs(stream, task, limits, format=scan.format, mask_tokens=masks, params=typed)
                else:
                    read = read_inputs(stream, task, limits, format=fmt, mask_tokens=masks, params=typed)
                    errors, total_bad, records, total = read.errors, read.total_bad, read.records, len(read.records)
            else:
                read = validate_rows(enumerate(inputs, start=1), task, limits, mask_tokens=masks, params=typed)
                errors, total_bad, records, total = read.errors, read.total_bad, read.records, len(read.records)
            if errors and not skip_invalid:
                raise InvalidInput(errors, total_bad)
            if not total:
                raise InvalidInput([LineError(0, None, "no valid input lines"), *errors], max(1, total_bad))
            queue = self.settings.queue_of(spec)
            self._check_broker()
            job_id = uuid.uuid4().hex
            n_chunks = chunk_count(total, size)
            committing = False
            try:
                with self.sessions() as session, session.begin():
                    stored.check_quota(session, options.tenant, total)
                    store_job(
                        session, job_id, task, model, full_params, records, size, queue, total=total, options=options
                    )
                    if on_store is not None:
                        on_store(session, job_id)
                    committing = True
            except IntegrityError:
                # Another request with the same Idempotency-Key stored its job first: that job, or a conflict.
                replayed = self._replayed(options)
                if replayed is None:
                    raise
                return replayed
            except DatabaseUnavailable as exc:
                # One transaction, and nothing is enqueued before it commits: a database that went away stored
                # nothing, unless it went away during the commit itself, when only the database knows.
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
        if not self.settings.fair_dispatch:
            self._enqueue(job_id, n_chunks, queue)
        # Otherwise the dispatcher sends the chunks, in fair order (`inferq.dispatcher`).
        return Submission(job_id, total, n_chunks, errors if skip_invalid else [], total_bad)

    def _replayed(self, options: JobOptions) -> Submission | None:
        """The job this tenant made with ``options.idempotency_key`` (`IdempotencyConflict` when it came with another
        request), or ``None`` when there is none (or no key)."""
        if options.idempotency_key is None:
            return None
        with self.reader() as session:
            job = stored.job_by_idempotency_key(session, options.tenant, options.idempotency_key)
            if job is None:
                return None
            if job.request_hash != options.request_hash:
                raise IdempotencyConflict(
                    f"Idempotency-Key {options.idempotency_key!r} was used for another request (job {job.id})"
                )
            return Submission(job.id, job.total, job.n_chunks, replayed=True)

    def _check_broker(self) -> None:
        try:
            with self.celery.connection_for_write() as conn:
                conn.ensure_connection(max_retries=2, interval_start=0.2, interval_step=0.5, timeout=5)
        except Exception as exc:
            raise BrokerUnavailable(f"broker unreachable, nothing was submitted: {type(exc).__name__}: {exc}") from exc

    def _enqueue(self, job_id: str, n_chunks: int, queue: str) -> None:
        from inferq.task_specs import RUN_CHUNK

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
                    stored.mark_enqueued(session, job_id, sent)

    # -- read ------------------------------------------------------------------------------------------

    def status(self, job_id: str, *, tenant: str | None = None) -> JobStatus:
        """The job's status. With ``tenant``, another tenant's job is `JobNotFound`, as a job that does not exist."""
        with self.reader() as session:
            return with_position(session, job_status(stored.job_of(session, job_id, tenant)), self.settings)

    def jobs(
        self,
        limit: int = 20,
        state: JobState | None = None,
        *,
        tenant: str | None = None,
        task: str | None = None,
        model: str | None = None,
        metadata: dict[str, str] | None = None,
        after: str | None = None,
    ) -> list[JobStatus]:
        """Jobs newest first (created, then id, descending), filtered: of ``tenant`` only (``None``: every
        tenant's), in ``state``, of ``task`` or ``model``, whose metadata hold every key-value of ``metadata``; after
        the job ``after`` in that order (a cursor: the last id of the previous page; `InvalidParameter` when it
        names no job of the tenant)."""
        with self.reader() as session:
            cursor: Job | None = None
            if after is not None:
                try:
                    cursor = stored.job_of(session, after, tenant)
                except JobNotFound:
                    raise InvalidParameter(f"no job {after!r} to list after", field="after") from None
            found = stored.list_jobs(
                session,
                limit=limit,
                tenant=tenant,
                state=state,
                task=task,
                model=model,
                metadata=metadata,
                after=cursor,
            )
            return [job_status(j) for j in found]

    def models(self) -> dict[str, ModelSpec]:
        return dict(self.settings.models)

    def dispatcher(self) -> api.Dispatcher:
        """The dispatcher's state (`dispatcher_status`), every queue and every capped tenant named."""
        with self.reader() as session:
            return dispatcher_status(session, self.settings)

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
        from inferq.store.results import result_rows
        from inferq.task_specs import TASKS
        from producer.results import ResultFilter, ResultRow
        from producer.vectors import exported  # numpy: only for results, not for a status read

        task = TaskName(self.status(job_id).task)  # raises JobNotFound
        with_vectors = TASKS[task].vectors
        with self.reader() as session:
            rows = result_rows(
                session, job_id, ResultFilter(label, min_score, failed, state), with_vectors=with_vectors
            )
            for r in rows.mappings():
                yield ResultRow(
                    index=r["index"],
                    id=r["client_id"],
                    status=r["status"],
                    result=exported(r["result"], r["vector"]) if with_vectors else r["result"],
                    error={"code": r["error_code"], "message": r["error_message"] or ""}
                    if r["error_code"] is not None
                    else None,
                    label=r["label"],
                    score=r["score"],
                    answer=r["answer"],
                    start=r["start_char"],
                    end=r["end_char"],
                    entity_count=r["entity_count"],
                    task=task,
                )

    def export(
        self,
        job_id: str,
        out: str | os.PathLike[str] | IO[bytes],
        *,
        format: ExportFormat = "jsonl",
        label: str | None = None,
        min_score: float | None = None,
        failed: bool = False,
        state: ItemState | None = None,
    ) -> Exported:
        """Write the job's items that the filters keep in ``format`` to ``out`` (a path, or a binary stream for
        JSONL and CSV) with `producer.export`'s writers: NPY writes its rows file beside the matrix. An unknown job
        is `JobNotFound` before any file is made."""
        from producer.export import export_jsonl, export_npy, export_parquet, write_csv
        from producer.protocol import FILE_FORMATS, Exported, export_target, file_path
        from producer.results import ResultFilter

        filters = ResultFilter(label, min_score, failed, state)
        task = TaskName(self.status(job_id).task)  # raises JobNotFound
        if format in FILE_FORMATS:
            path = file_path(out, format)
            with self.reader() as session:
                if format == "npy":
                    return Exported("npy", path, export_npy(session, job_id, path, filters).rows_path)
                export_parquet(session, job_id, path, filters)
                return Exported("parquet", path)
        with export_target(out) as stream:
            text = io.TextIOWrapper(stream, encoding="utf-8", newline="", write_through=True)
            try:
                if format == "csv":
                    write_csv(
                        self.results(job_id, label=label, min_score=min_score, failed=failed, state=state), text, task
                    )
                else:
                    with self.reader() as session:
                        export_jsonl(session, job_id, text, filters)
                text.flush()
            finally:
                text.detach()
        return Exported(format, Path(out) if isinstance(out, str | os.PathLike) else None)

    # -- control ---------------------------------------------------------------------------------------

    def cancel(self, job_id: str, *, tenant: str | None = None) -> JobStatus:
        """Stop a job: unfinished items become ``cancelled``; a running chunk stops at its next micro-batch.
        Finished results stay. With ``tenant``, another tenant's job is `JobNotFound`. A job with a webhook records its
        ``job.cancelled`` event in the same transaction and enqueues it after the commit."""
        from inferq.store.outbox import record_job_ends
        from inferq.webhooks import send_deliveries

        now = utcnow()
        webhooks: list[str] = []
        with self.sessions.begin() as session:
            stored.job_of(session, job_id, tenant)
            if stored.cancel_job(session, job_id, now):
                webhooks = record_job_ends(session, [job_id])
        if webhooks:
            send_deliveries(self.celery, self.settings, webhooks)
        return self.status(job_id)

    def retry(self, job_id: str, *, tenant: str | None = None) -> Submission:
        """Submit the failed items of the finished job ``job_id`` as a new job: same task, model, parameters,
        chunk size, metadata, webhook and tenant, its `JobStatus.retry_of` naming the first job, whose items keep
        their errors. The items keep their ids; the new job's indices count from 0 in the first job's order.
        `JobNotFinished` while the job runs, `NothingToRetry` when none of its items failed."""
        with self.reader() as session:
            job = stored.job_of(session, job_id, tenant)
            if not job.state.finished:
                raise JobNotFinished(f"job {job_id} is {job.state.value}: retry it once it has ended")
            failed = stored.failed_inputs(session, job_id)
            if not failed:
                raise NothingToRetry(f"job {job_id} has no failed items")
            task, model, params, chunk_size = job.task, job.model, dict(job.params), job.chunk_size
            options = JobOptions(
                tenant=job.tenant,
                metadata=job.meta,
                webhook_url=job.webhook_url,
                retry_of=job.id,
                priority=job.priority,
            )
        rows = [dict(f["input"], id=f["client_id"]) if f["client_id"] is not None else dict(f["input"]) for f in failed]
        return self.submit(task, model, rows, params, chunk_size=chunk_size, options=options)

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        poll: float = constants.DEFAULT_POLL_SECONDS,
        on_progress: Callable[[JobStatus], None] | None = None,
    ) -> JobStatus:
        """Poll until the job ends (or ``timeout`` seconds pass: `TimeoutError`)."""
        return poll_until_finished(self.status, job_id, timeout=timeout, poll=poll, on_progress=on_progress)


def poll_until_finished(
    status_of: Callable[[str], JobStatus],
    job_id: str,
    *,
    timeout: float | None,
    poll: float,
    on_progress: Callable[[JobStatus], None] | None,
) -> JobStatus:
    """``status_of(job_id)`` every ``poll`` seconds, each one given to ``on_progress``, until the job ends (or
    ``timeout`` seconds pass: `TimeoutError`): `Client.wait` and `RemoteClient.wait` alike."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        status = status_of(job_id)
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
    records: Iterable[InputRecord],
    chunk_size: int,
    queue: str,
    *,
    total: int | None = None,
    copy: bool | None = None,
    options: JobOptions | None = None,
) -> None:
    """Insert the job, its chunks and its items (flushed, not committed: the caller's transaction decides).

    ``records`` is read once, one record at a time, so that a stream of them (`producer.inputs.iter_inputs`) is
    stored in constant memory; the job and its chunks are written first, from ``total`` (the count of records;
    ``None``: a sequence's length, or the records are listed first). Records that turn out more or fewer than
    ``total`` raise `InvalidInput`, and the caller's transaction then stores nothing.

    ``copy``: stream the items with COPY (PostgreSQL only) or insert them in batches of
    `constants.INSERT_BATCH_ROWS`; ``None`` picks COPY on PostgreSQL."""
    from inferq.task_specs import batch_key

    if total is None:
        records = records if isinstance(records, Sequence) else list(records)
        total = len(records)
    options = options or JobOptions()
    job = stored.NewJob(
        id=job_id,
        task=task.value,
        model=model,
        params=params,
        queue=queue,
        chunk_size=chunk_size,
        total=total,
        batch_key=batch_key(task, model, params),
        tenant=options.tenant,
        metadata=options.metadata,
        webhook_url=options.webhook_url,
        idempotency_key=options.idempotency_key,
        request_hash=options.request_hash,
        retry_of=options.retry_of,
        priority=options.priority,
        deadline_at=None if options.deadline is None else utcnow() + options.deadline,
    )
    stored.add_job(session, job)
    stored.add_items(session, job_id, _numbered(records, total), copy=copy)


def _numbered(records: Iterable[InputRecord], total: int) -> Iterator[tuple[int, InputRecord]]:
    """Each record with its item index; `InvalidInput` as soon as the records are not ``total`` in number."""
    count = 0
    for record in records:
        if count == total:
            raise _changed(total, f"more than {total}")
        yield count, record
        count += 1
    if count != total:
        raise _changed(total, str(count))


def _changed(expected: int, found: str) -> InvalidInput:
    return InvalidInput(
        [LineError(0, None, f"the input changed while it was being stored: {expected} valid lines, then {found}")]
    )


def _seekable(stream: IO[Any]) -> bool:
    """Whether a stream can be read twice: a regular file, or a file standard input was redirected from; not a pipe."""
    try:
        return bool(stream.seekable())
    except (AttributeError, ValueError, OSError):
        return False


def with_position(session: Session, status: JobStatus, settings: Settings) -> JobStatus:
    """``status`` with its `JobStatus.position` (`inferq.store.dispatch.chunks_ahead`) and the dispatcher's state on
    its queue (`dispatcher_status`) while it is unfinished: the position counted while the job is queued, 0 while it
    runs; without the dispatcher (``direct``) no position, and the dispatcher said to be ``direct``."""
    if status.state not in (JobState.QUEUED, JobState.RUNNING):
        return status
    if not settings.fair_dispatch:
        return status.model_copy(update={"dispatcher": DIRECT_DISPATCH})
    from inferq.store.dispatch import chunks_ahead

    position = 0 if status.state is JobState.RUNNING else chunks_ahead(session, status.id)
    dispatcher = dispatcher_status(session, settings, job_id=status.id, tenant=status.tenant)
    return status.model_copy(update={"position": position, "dispatcher": dispatcher})


#: The dispatcher's state without one: chunks are sent at submit (``INFERQ_DISPATCH=direct``, or SQLite).
DIRECT_DISPATCH = api.Dispatcher(mode="direct")


def dispatcher_status(
    session: Session,
    settings: Settings,
    *,
    job_id: str | None = None,
    tenant: str | None = None,
    now: dt.datetime | None = None,
) -> api.Dispatcher:
    """The dispatcher's state, from the row its leader rewrites (`inferq.store.dispatch.last_round`): every queue,
    or with ``job_id`` that job's queue only. With ``tenant``, the capped tenants named are that tenant only (a
    tenant sees how much other tenants' caps hold back, not who they are). A row older than
    `inferq.constants.DISPATCH_STATE_STALE_SECONDS` (its leader died, or every worker stopped) says that nobody
    leads, with when its last round ran, and nothing of the queues it no longer knows."""
    if not settings.fair_dispatch:
        return DIRECT_DISPATCH
    from inferq.store.dispatch import last_round

    row, queue = last_round(session, job_id)
    if row is None:
        return api.Dispatcher(mode="fair")
    ran = as_utc(row.last_round)
    if ((now or utcnow()) - ran).total_seconds() > constants.DISPATCH_STATE_STALE_SECONDS:
        return api.Dispatcher(mode="fair", last_round=ran)
    queues = [
        api.DispatchQueue(
            queue=name,
            window=int(state["window"]),
            waiting=int(state["waiting"]),
            running=int(state["running"]),
            held=int(state["held"]),
            held_by_cap=int(state["held_by_cap"]),
            capped=[t for t in state.get("capped", []) if tenant is None or t == tenant],
        )
        for name, state in sorted(row.queues.items())
        if job_id is None or name == queue
    ]
    return api.Dispatcher(
        mode="fair",
        leader=row.leader,
        leader_since=as_utc(row.leader_since),
        last_round=ran,
        released=row.released,
        queues=queues,
    )


def job_status(job: Job | Row[Any]) -> JobStatus:
    """The `JobStatus` of a job's row: the ORM object, or a Core row carrying the same attribute names (a status
    poll's, `inferq.store.auth.key_and_job`)."""
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
        tenant=job.tenant,
        metadata=dict(job.meta or {}),
        webhook_url=job.webhook_url,
        retry_of=job.retry_of,
        chunk_size=job.chunk_size,
        priority=job.priority,
        deadline_at=as_utc(job.deadline_at),
    )
