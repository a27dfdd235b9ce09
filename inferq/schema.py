"""The SQL schema (SQLAlchemy 2, typed). The database is the record of every job, chunk and item.

A job's items are split into chunks of consecutive indices; one Celery message per chunk carries
``(job_id, chunk_seq)``. An item's input (`Item`) is written once, at submit; its outcome is appended once, as a row
of `Result` with the same key ``(job_id, index)`` (COPY on PostgreSQL), by the transaction that holds its chunk's
row lock and finds the chunk not yet done: a redelivered chunk writes nothing twice (`inferq.store.chunks`). No row
is ever rewritten with a result; an item without one takes its state from its job's.
"""

from __future__ import annotations

import datetime as dt
from enum import Enum
from typing import Any, overload

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy import Enum as SqlEnum
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from inferq.states import ChunkState, DeliveryState, ItemState, JobState

#: Constraint names fixed by convention, so that migrations are the same on PostgreSQL and SQLite.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


def state_type(states: type[Enum]) -> SqlEnum:
    """A state column's type: reads and writes the enum's members, stored as their values (``"queued"``, …) in a
    plain VARCHAR(16), without a native enum or CHECK constraint, so that raw SQL and COPY write the same strings."""
    return SqlEnum(
        states,
        native_enum=False,
        length=16,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
        create_constraint=False,
    )


#: A job's priority when none is given (0 lowest, 9 highest).
DEFAULT_PRIORITY = 5

#: The tenant of every job created without the HTTP API (the CLI and `producer.Client` on the database).
DEFAULT_TENANT = "default"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@overload
def as_utc(value: dt.datetime) -> dt.datetime: ...
@overload
def as_utc(value: None) -> None: ...
def as_utc(value: dt.datetime | None) -> dt.datetime | None:
    """A stored time, zone-aware: SQLite hands timestamps back naive, and every stored time is UTC (``None``, a time
    not yet reached, stays ``None``)."""
    return value if value is None or value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    task: Mapped[str] = mapped_column(String(32))
    #: The registry name or local directory the user gave.
    model: Mapped[str] = mapped_column(String(1024))
    #: Complete task parameters (defaults filled in at submit).
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[JobState] = mapped_column(state_type(JobState), default=JobState.QUEUED, index=True)
    queue: Mapped[str] = mapped_column(String(255))
    chunk_size: Mapped[int] = mapped_column(Integer)
    n_chunks: Mapped[int] = mapped_column(Integer)
    #: Counts kept as columns, so that status is one primary-key read whatever the job's size.
    total: Mapped[int] = mapped_column(Integer)
    succeeded: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    error_code: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    #: `inferq.task_specs.batch_key` of (task, model, params): jobs with equal keys share micro-batches on a worker.
    batch_key: Mapped[str | None] = mapped_column(String(64))
    #: The tenant whose key created the job (`Tenant.name`); jobs submitted without the HTTP API belong to
    #: `DEFAULT_TENANT`.
    tenant: Mapped[str] = mapped_column(String(64), default=DEFAULT_TENANT, server_default=DEFAULT_TENANT)
    #: Free-form string key-values the user attached at submit, stored and returned as given.
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)
    #: Where the job's end event is POSTed (`inferq.webhooks`); ``None``: no webhook.
    webhook_url: Mapped[str | None] = mapped_column(Text)
    #: The ``Idempotency-Key`` the job was created with, unique per tenant, and a digest of the request it came
    #: with: the same key with the same request returns this job; with another request, a conflict.
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    #: A job created to retry another job's failed items: that job's id.
    retry_of: Mapped[str | None] = mapped_column(String(32))
    #: 0 to 9: within its tenant, the dispatcher sends a higher priority's chunks first (`inferq.dispatcher`).
    priority: Mapped[int] = mapped_column(Integer, default=DEFAULT_PRIORITY, server_default=str(DEFAULT_PRIORITY))
    #: The end of the job's completion window (created + ``--deadline``): items not done by then end ``expired``,
    #: and the job with them. ``None``: no deadline.
    deadline_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_jobs_batch_key_state", "batch_key", "state"),
        Index("ix_jobs_tenant_created_at", "tenant", "created_at"),
        UniqueConstraint("tenant", "idempotency_key", name="uq_jobs_tenant_idempotency_key"),
    )


class Chunk(Base):
    __tablename__ = "chunks"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: Item indices ``start <= index < stop``.
    start: Mapped[int] = mapped_column(Integer)
    stop: Mapped[int] = mapped_column(Integer)
    state: Mapped[ChunkState] = mapped_column(state_type(ChunkState), default=ChunkState.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: While running: until when the claiming worker owns it.
    lease_until: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    worker: Mapped[str | None] = mapped_column(String(255))
    enqueued_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    #: While running as a batch-mate: the chunk (``"job_id/seq"``) whose claim took it into its batch. The
    #: chunk's own message, delivered meanwhile, then leaves it to that batch (see `worker.runner`).
    leader: Mapped[str | None] = mapped_column(String(48))

    __table_args__ = (Index("ix_chunks_state_lease", "state", "lease_until"),)


#: The dispatcher's reads: a job's chunks still held back in SQL (queued, never released), in order.
_UNRELEASED = (Chunk.state == ChunkState.QUEUED) & Chunk.enqueued_at.is_(None)
Index("ix_chunks_unreleased", Chunk.job_id, Chunk.seq, postgresql_where=_UNRELEASED, sqlite_where=_UNRELEASED)


class Item(Base):
    """An item's input, written once at submit and never rewritten: its result is a `Result` row of its own.

    No foreign key (migration 0011): its check was a trigger run per row of a submit's COPY; items are written with
    their job and go before it (`inferq.store.maintenance.delete_items`)."""

    __tablename__ = "items"

    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: The ``id`` the user gave on the input line, if any.
    client_id: Mapped[str | None] = mapped_column(String(255))
    input: Mapped[dict[str, Any]] = mapped_column(JSON)


class Result(Base):
    """An item's outcome, appended once when it ended (succeeded or failed), never updated: its primary key is its
    item's. An item without one has not ended by itself; its state follows its job's (`inferq.states.item_state_of`).

    No foreign key: each row's check would be a trigger run per row of a COPY; a job's results go with its items
    (`inferq.store.maintenance.delete_items`)."""

    __tablename__ = "results"

    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: ``succeeded`` or ``failed`` (`inferq.states.STORED_ITEM_STATES`).
    state: Mapped[ItemState] = mapped_column(state_type(ItemState))
    #: The task's result as JSON (`inferq.results`): top-k labels, answers, fillers per mask, entities, ranked
    #: documents; for embeddings what describes the vectors (``{"dim", "dtype"[, "windows"]}``).
    result: Mapped[Any] = mapped_column(JSON, nullable=True)
    #: Embeddings: the vectors' bytes, little-endian ``dtype`` (float32 or float16), one vector after another
    #: (one per window with ``overflow=windows``). Compact and exact: 1.5 KiB per 384-d float32 vector.
    vector: Mapped[bytes | None] = mapped_column(LargeBinary)
    #: The top result in typed columns, so that queries filter in SQL.
    #: classification, zero-shot: best label; fill-mask: best token_str; token classification: best entity's
    #: label.
    label: Mapped[str | None] = mapped_column(String(255))
    #: Score of the top result (rerank: the best document's).
    score: Mapped[float | None] = mapped_column(Float)
    #: Question answering: the best answer and its character span in the context.
    answer: Mapped[str | None] = mapped_column(Text)
    start_char: Mapped[int | None] = mapped_column(Integer)
    end_char: Mapped[int | None] = mapped_column(Integer)
    #: Token classification: how many entities were found.
    entity_count: Mapped[int | None] = mapped_column(Integer)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    #: Deliveries that read the item before it got its result (its chunk's claims then).
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_results_job_label", "job_id", "label"),)


#: A job's failed results (the failed filter, the error summary by code): an entry for those only, so that a COPY of
#: succeeded results writes none (migration 0011). Succeeded ones are read on the primary key's range.
_FAILED = Result.state == ItemState.FAILED
Index("ix_results_job_failed", Result.job_id, Result.error_code, postgresql_where=_FAILED, sqlite_where=_FAILED)


class Tenant(Base):
    """Who owns jobs behind the HTTP API. Created with the first key (`inferq keys create --tenant NAME`)."""

    __tablename__ = "tenants"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: Unfinished items (of queued and running jobs) the tenant may hold at once; ``None``: no limit.
    max_queued_items: Mapped[int | None] = mapped_column(Integer)
    #: Signs the tenant's webhooks (Standard Webhooks: ``whsec_`` + base64 of the key bytes). Kept in clear because
    #: signing needs it; shown to the tenant's admin once, at creation.
    webhook_secret: Mapped[str] = mapped_column(String(128))
    #: The secret a rotation replaced: it still signs (beside the new one) until `previous_secret_expires_at`, so
    #: that receivers can switch without refusing a request (`inferq.store.secrets`).
    previous_webhook_secret: Mapped[str | None] = mapped_column(String(128))
    previous_secret_expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: The tenant's share of the workers against other tenants with chunks waiting (`inferq.dispatcher`): a tenant
    #: of weight 3 gets three chunks for one of a tenant of weight 1.
    weight: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    #: Most of the tenant's chunks released to the broker and not done at once; ``None``: no cap.
    max_chunks_in_flight: Mapped[int | None] = mapped_column(Integer)


class DispatcherRound(Base):
    """What the dispatcher's leader did last (`inferq.dispatcher`): one row, rewritten by one statement when a round
    changes what it says (and at least every `inferq.constants.DISPATCH_STATE_HEARTBEAT_SECONDS`), so that any
    process (``inferq status``, the HTTP API, the job page) can show the dispatcher without asking the workers. A row
    whose `last_round` is older than `inferq.constants.DISPATCH_STATE_STALE_SECONDS` says that nobody leads."""

    __tablename__ = "dispatcher_rounds"

    #: Always 1: the one row.
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: The leading worker's process: ``hostname:pid``.
    leader: Mapped[str] = mapped_column(String(255))
    leader_since: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    #: When the round this row describes ended.
    last_round: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    #: Chunks that round released.
    released: Mapped[int] = mapped_column(Integer)
    #: Per queue, after that round: ``window``, ``waiting`` (released, not claimed), ``running``, ``held`` (in SQL,
    #: not released), ``held_by_cap`` (of those, chunks of tenants at their cap) and ``capped`` (those tenants).
    queues: Mapped[dict[str, Any]] = mapped_column(JSON)


class ApiKey(Base):
    """An API key. Only a hash is stored: the key (``iq_<id>_<secret>``) is shown once, when it is created."""

    __tablename__ = "api_keys"

    #: The key's public part, shown by ``inferq keys list`` and used to find the key's row.
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant: Mapped[str] = mapped_column(ForeignKey("tenants.name", ondelete="CASCADE"), index=True)
    #: SHA-256 (hex) of the whole key; keys carry 256 random bits, so a fast hash is enough.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    #: An admin key sees and acts on every tenant's jobs.
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: Set by ``inferq keys revoke``: the key is refused from the next request on.
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class WebhookDelivery(Base):
    """A job's end event, recorded in the transaction that ended the job (an outbox) and sent by a Celery task
    until the endpoint takes it: at-least-once, and every attempt is kept."""

    __tablename__ = "webhook_deliveries"

    #: ``msg_…``: the ``webhook-id`` header, the same on every attempt, so that a receiver can drop duplicates.
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    tenant: Mapped[str] = mapped_column(String(64))
    #: ``job.succeeded``, ``job.failed``, ``job.cancelled`` or ``job.expired``.
    event: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(Text)
    #: The request body, exactly as signed and sent on every attempt.
    payload: Mapped[str] = mapped_column(Text)
    state: Mapped[DeliveryState] = mapped_column(state_type(DeliveryState), default=DeliveryState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: While pending: when the next attempt is due.
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_webhook_deliveries_state_next_attempt_at", "state", "next_attempt_at"),)


class WebhookAttempt(Base):
    """One try at delivering a `WebhookDelivery`: what the endpoint answered, or why nothing came back."""

    __tablename__ = "webhook_attempts"

    delivery_id: Mapped[str] = mapped_column(ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), primary_key=True)
    #: 1 for the first attempt, 2 for the next …
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    #: The HTTP status the endpoint answered; ``None`` when it did not answer (see `error`).
    status_code: Mapped[int | None] = mapped_column(Integer)
    #: Why the attempt failed (timeout, connection refused, a non-2xx status); ``None`` on success.
    error: Mapped[str | None] = mapped_column(Text)
    #: Seconds from sending the request to the answer (or the failure).
    duration: Mapped[float] = mapped_column(Float)


class OpenAIFile(Base):
    """A file of the OpenAI-compatible API (``POST /v1/files``): its bytes lie in the files directory
    (``INFERQ_FILES_DIR``, `server.openai.files`) under its id; this row is its metadata and its owner."""

    __tablename__ = "openai_files"

    #: ``file-…``: also the name of its bytes in the files directory.
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    #: The tenant of the key that uploaded it (or of the batch that produced it).
    tenant: Mapped[str] = mapped_column(String(64))
    #: ``batch`` (uploaded), ``batch_output`` (a batch's output or error file).
    purpose: Mapped[str] = mapped_column(String(32))
    filename: Mapped[str] = mapped_column(String(255))
    bytes: Mapped[int] = mapped_column(Integer)
    #: Lines of the file (at most `inferq.constants.MAX_FILE_LINES`).
    lines: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: When the file expires (OpenAI's ``expires_after``; a batch's ``output_expires_after`` for its output and
    #: error files): from then on it is not found, and the purge (`inferq.retention.purge_expired_files`) deletes
    #: its bytes and its row. ``None``: never.
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_openai_files_tenant_created_at", "tenant", "created_at"),
        Index("ix_openai_files_expires_at", "expires_at"),
    )


class OpenAIBatch(Base):
    """A batch of the OpenAI-compatible API (``POST /v1/batches``): the inferq job its valid lines became, and what
    the job itself does not hold (the input file, the lines refused before the job, the output and error files)."""

    __tablename__ = "openai_batches"

    #: ``batch_…``.
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64))
    endpoint: Mapped[str] = mapped_column(String(64))
    input_file_id: Mapped[str] = mapped_column(String(40))
    completion_window: Mapped[str] = mapped_column(String(16))
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)
    #: The inferq job of the batch's valid lines; ``None`` when no line was valid (the batch ``failed``).
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    #: Lines of the input file, and how many of them were refused before the job (listed in `errors` and the
    #: error file).
    total_lines: Mapped[int] = mapped_column(Integer)
    bad_lines: Mapped[int] = mapped_column(Integer, default=0)
    #: Items of the job per valid line, when every line gave one input (``True``): the job's counts are the
    #: lines' counts while it runs.
    one_item_per_line: Mapped[bool] = mapped_column(Boolean, default=True)
    #: The first refused lines as OpenAI's ``errors.data`` (code, message, param, line).
    errors: Mapped[list[Any] | None] = mapped_column(JSON)
    #: Lines that succeeded and failed in all, counted when the output files were written.
    completed_lines: Mapped[int | None] = mapped_column(Integer)
    failed_lines: Mapped[int | None] = mapped_column(Integer)
    output_file_id: Mapped[str | None] = mapped_column(String(40))
    error_file_id: Mapped[str | None] = mapped_column(String(40))
    #: When the output files were written (the batch is ``completed``, ``cancelled`` or ``expired`` from then on).
    finalized_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    cancelling_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: The request's ``webhook_url``, kept for the job that validation makes (`server.openai.validation`).
    webhook_url: Mapped[str | None] = mapped_column(Text)
    #: ``output_expires_after.seconds`` of the request: the output and error files expire that long after they
    #: are written (``None``: never).
    output_expires_after: Mapped[int | None] = mapped_column(Integer)
    #: When validation ended: the job made (``job_id`` set), the batch failed (no valid line, or a batch-wide
    #: error in `errors`) or cancelled. ``None``: the batch is ``validating``.
    validated_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    #: The server process validating the batch (a random token of it) and until when its lease holds; another
    #: process takes over a batch whose lease has ended (`server.openai.validation`). Cleared once validated.
    lease_owner: Mapped[str | None] = mapped_column(String(32))
    lease_until: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_openai_batches_tenant_created_at", "tenant", "created_at"),
        Index("ix_openai_batches_lease_until", "lease_until"),
    )
