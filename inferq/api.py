"""The HTTP API's answers as pydantic models: what the server declares (``response_model``, so that the OpenAPI
document is the contract), what `producer.remote.RemoteClient` parses, and, for the job, what `producer.Client`
returns itself: `Job` is `producer.client.JobStatus`, one representation of a job on every side.

Light on purpose (pydantic only: no FastAPI, no SQLAlchemy, no torch), so that the producer imports it.

Times are written as Python's ``datetime.isoformat`` writes them (``2026-11-30T10:00:00.123456+00:00``), as the API
always wrote them, not in pydantic's ``Z`` spelling.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema, computed_field
from typing_extensions import TypedDict

from inferq.settings import ModelSpec
from inferq.states import JobState

__all__ = [
    "ApiKey",
    "DispatchQueue",
    "Dispatcher",
    "ErrorBody",
    "ErrorCount",
    "ErrorDetail",
    "ErrorInfo",
    "ErrorSummary",
    "Health",
    "Job",
    "JobCreated",
    "JobList",
    "LineProblem",
    "ModelInfo",
    "ModelList",
    "PartError",
    "Readiness",
    "Timeline",
    "TimelinePoint",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookDeliveryList",
    "WebhookSigningSecret",
]


#: The media type of an NPY export with its rows file: a tar of the two members below, for a request that
#: accepts it (``GET /v1/jobs/{id}/results?format=npy``; otherwise the matrix alone).
NPY_TAR_MEDIA_TYPE = "application/x-tar"
#: The tar's members: the matrix, and which rows are whose (`producer.export.npy_rows_path`'s file).
NPY_TAR_MATRIX = "matrix.npy"
NPY_TAR_ROWS = "rows.jsonl"


def _iso(value: dt.datetime) -> str:
    return value.isoformat()


#: A time as the API writes it: ISO 8601 with its UTC offset (``+00:00``).
Time = Annotated[
    dt.datetime,
    PlainSerializer(_iso, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class ErrorInfo(TypedDict):
    """Why a job or an item failed: a stable code of `inferq.errors` and a message (a mapping, so that
    ``status.error["code"]`` reads it)."""

    code: str
    message: str


class DispatchQueue(BaseModel):
    """One queue as the dispatcher's last round left it (`inferq.dispatcher`)."""

    model_config = ConfigDict(frozen=True)

    queue: str
    #: Most released chunks waiting for a worker (``INFERQ_DISPATCH_WINDOW``).
    window: int
    #: Released chunks waiting for a worker (their message on the broker), and chunks running.
    waiting: int
    running: int
    #: Chunks held back in SQL, not released yet; of those, chunks of tenants that have reached their cap on chunks
    #: in flight (``capped``: those tenants, the caller's own only unless it is an admin).
    held: int
    held_by_cap: int
    capped: list[str] = Field(default_factory=list)


class Dispatcher(BaseModel):
    """The dispatcher's state: who leads and what its last round did, from the row its leader rewrites
    (`inferq.schema.DispatcherRound`). ``mode`` ``direct``: chunks are sent at submit, no dispatcher orders them
    (``INFERQ_DISPATCH=direct``, or SQLite). A ``fair`` dispatcher without a ``leader``: no worker leads now (none
    runs, or the last leader's row is older than a few leader leases); ``last_round`` then says when one last did."""

    model_config = ConfigDict(frozen=True)

    mode: Literal["fair", "direct"]
    #: The leading worker's process, ``hostname:pid``.
    leader: str | None = None
    leader_since: Time | None = None
    #: When the leader's last round ran (at most a second old while a leader runs).
    last_round: Time | None = None
    #: Chunks that round released.
    released: int | None = None
    queues: list[DispatchQueue] = Field(default_factory=list)


class Job(BaseModel):
    """A job: what it runs, its state and counts, its times, and what the HTTP API adds (tenant, metadata, webhook,
    the job it retries). ``job_id``, ``done``, ``items_per_second`` and ``eta_seconds`` are derived, and written in
    its JSON as well (``job_id``: the key the CLI's JSON always had)."""

    model_config = ConfigDict(frozen=True)

    id: str
    #: The JSON object's kind, as the API's list objects carry theirs.
    object: Literal["job"] = "job"
    #: The tenant that owns the job (`inferq.schema.DEFAULT_TENANT` unless the HTTP API set a key's).
    tenant: str = "default"
    task: str
    model: str
    state: JobState
    total: int
    succeeded: int
    failed: int
    params: dict[str, Any]
    created_at: Time
    started_at: Time | None
    finished_at: Time | None
    #: The job-level error (a model that does not load …); items keep their own.
    error: ErrorInfo | None
    metadata: dict[str, str] = Field(default_factory=dict)
    chunk_size: int | None = None
    webhook_url: str | None = None
    #: The job whose failed items this job retries.
    retry_of: str | None = None
    #: 0 to 9: within its tenant, a higher priority's chunks go to the workers first.
    priority: int = 5
    #: The end of its completion window: items not done by then end ``expired``; ``None``: no deadline.
    deadline_at: Time | None = None
    #: Chunks that go to the workers before this job's next one (the least it waits for: other tenants' chunks
    #: come between by their weights); 0 while one of its chunks runs; ``None`` when finished, or not asked.
    position: int | None = None
    #: The dispatcher's state, its queue's only, while the job is unfinished; ``None`` when finished, or not asked.
    dispatcher: Dispatcher | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def job_id(self) -> str:
        return self.id

    @computed_field  # type: ignore[prop-decorator]
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
        end = self.finished_at or _now()
        return max((end - self.started_at).total_seconds(), 1e-9)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def items_per_second(self) -> float | None:
        elapsed = self.elapsed
        return None if elapsed is None or self.done == 0 else self.done / elapsed

    @computed_field  # type: ignore[prop-decorator]
    @property
    def eta_seconds(self) -> float | None:
        """Seconds until the last item ends at the rate so far; ``None`` when finished or before any item ended."""
        rate = self.items_per_second
        if self.finished or not rate:
            return None
        return max(self.total - self.done, 0) / rate


class LineProblem(BaseModel):
    """A bad input line: its 1-based number (0: the input as a whole), the field at fault, and what is wrong."""

    line: int
    field: str | None
    message: str


class JobCreated(Job):
    """``POST /v1/jobs``' answer (201): the job, and the lines ``skip_invalid`` left out (at most
    `Limits.max_errors` listed, ``skipped_total`` counting them all)."""

    skipped: list[LineProblem] = Field(default_factory=list)
    skipped_total: int = 0


class JobList(BaseModel):
    """A page of jobs, newest first; ``next_after`` is the cursor of the next page (``after=``) when
    ``has_more``."""

    object: Literal["list"] = "list"
    data: list[Job]
    has_more: bool
    next_after: str | None


class ModelInfo(ModelSpec):
    """A registry entry with its name."""

    name: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelInfo]


class ApiKey(BaseModel):
    """An API key as ``inferq keys list --json`` shows it: never the key, nor its hash."""

    id: str
    tenant: str
    admin: bool
    created_at: Time
    revoked_at: Time | None


class WebhookAttempt(BaseModel):
    """One try of a delivery: the receiver's status code, or the error that stopped it."""

    number: int
    at: str | None
    status_code: int | None
    error: str | None
    duration: float | None


class WebhookDelivery(BaseModel):
    """A job event's delivery to the job's webhook URL, with every attempt."""

    id: str
    event: str
    url: str
    state: str
    attempts: int
    created_at: str | None
    delivered_at: str | None
    #: When it is tried next (a pending delivery only).
    next_attempt_at: str | None
    attempt_log: list[WebhookAttempt]


class WebhookDeliveryList(BaseModel):
    object: Literal["list"] = "list"
    data: list[WebhookDelivery]


class WebhookSigningSecret(BaseModel):
    """The secret that signs a tenant's webhooks, as its own key reads or rotates it."""

    object: Literal["webhook_secret"] = "webhook_secret"
    tenant: str
    #: Signs every webhook (``whsec_…``).
    secret: str
    #: Until when the secret a rotation replaced still signs too (a second ``v1,`` signature); ``None`` when no
    #: rotation's overlap is running.
    previous_expires_at: Time | None


class TimelinePoint(BaseModel):
    t: str
    items: int
    items_per_second: float
    cumulative: int


class Timeline(BaseModel):
    """Items that ended per time bucket (``GET /v1/jobs/{id}/timeline``)."""

    object: Literal["timeline"] = "timeline"
    job_id: str
    start: str | None
    bucket_seconds: int
    points: list[TimelinePoint]


class ErrorCount(BaseModel):
    code: str
    count: int
    sample_message: str | None


class ErrorSummary(BaseModel):
    """The failed items' error codes, most frequent first (``GET /v1/jobs/{id}/error_summary``)."""

    object: Literal["list"] = "list"
    failed: int
    data: list[ErrorCount]


class ErrorDetail(BaseModel):
    """An error: its stable code (`inferq.errors`), a message, the parameter at fault (``field``) where one is, and
    for invalid input the bad lines (``lines``, at most `Limits.max_errors`; ``lines_total`` counts them all)."""

    model_config = ConfigDict(extra="allow")

    code: str
    message: str
    field: str | None = None
    lines: list[LineProblem] | None = None
    lines_total: int | None = None


class ErrorBody(BaseModel):
    """Every error answer's body: ``{"error": {"code", "message", …}}``."""

    error: ErrorDetail


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class PartError(BaseModel):
    code: str
    message: str


class Readiness(BaseModel):
    """Whether the database and the broker answer; ``errors`` names each part that does not."""

    database: Literal["ok", "unavailable"]
    broker: Literal["ok", "unavailable"]
    errors: dict[str, PartError] | None = None
