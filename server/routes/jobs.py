"""Jobs: create (a file upload), read, list, results, errors, cancel, retry, webhook deliveries.

Every route acts for the request's key (`server.auth`): a non-admin key sees its tenant's jobs only, and another
tenant's job is ``404 job_not_found``, exactly as a job that does not exist. Blocking work (validating and storing
a file, database reads) runs in the thread pool, so the event loop stays free.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import tarfile
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TextIO

import anyio
from fastapi import APIRouter, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.background import BackgroundTask

from inferq import api, constants
from inferq.errors import InvalidParameter, MalformedValue
from inferq.keys import Principal
from inferq.model_sources import resolve_model
from inferq.schema import DEFAULT_PRIORITY
from inferq.states import ItemState, JobState
from inferq.store.outbox import delivery_history
from inferq.task_specs import TaskName, find_unstorable, parse_task, unstorable
from producer.client import JobOptions, JobStatus, Submission, check_priority, parse_deadline
from producer.results import ResultFilter, ResultRow
from server.auth import Authorization, Caller, job_for_key
from server.deps import Made, Runtime
from server.errors import error_responses
from server.streams import QueueWriter, stream_text
from server.uploads import Format, Upload, receive_upload

router = APIRouter(tags=["jobs"], responses=error_responses(401, 404, 422, 500, 503))

#: Longest webhook URL accepted.
MAX_WEBHOOK_URL_CHARS = 2048
#: Longest Idempotency-Key (the width of `Job.idempotency_key`).
MAX_IDEMPOTENCY_KEY_CHARS = 255

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


# -- create ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SubmitOptions:
    """A create request's options, parsed (from the query string, or a multipart body's fields over it)."""

    task: TaskName
    model: str
    params: dict[str, Any]
    metadata: dict[str, Any] | None
    chunk_size: int | None
    webhook_url: str | None
    skip_invalid: bool
    format: Format
    priority: int = DEFAULT_PRIORITY
    deadline: dt.timedelta | None = None

    def request_hash(self, body_digest: str) -> str:
        """What makes two requests with one Idempotency-Key the same request (the API contract's list)."""
        canonical = json.dumps(
            {
                "task": self.task.value,
                "model": self.model,
                "params": self.params,
                "metadata": self.metadata or {},
                "chunk_size": self.chunk_size,
                "webhook_url": self.webhook_url,
                "priority": self.priority,
                "deadline": None if self.deadline is None else self.deadline.total_seconds(),
                "body": body_digest,
            },
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _json_object(values: Mapping[str, str], name: str) -> dict[str, Any] | None:
    raw = values.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidParameter(f"{name} is not valid JSON: {exc.msg} at character {exc.pos}", field=name) from None
    except (ValueError, RecursionError) as exc:  # an integer too long to convert, nesting too deep
        raise InvalidParameter(f"{name} is not valid JSON: {exc}", field=name) from None
    if not isinstance(value, dict):
        raise InvalidParameter(f"{name} must be a JSON object", field=name)
    bad = find_unstorable(value, name)
    if bad is not None:
        raise MalformedValue(f"{bad[0]}: {bad[1]}", field=bad[0])
    return value


def parse_options(values: Mapping[str, str], media_format: Format) -> SubmitOptions:
    """A create request's options (the query's, a multipart body's fields over them), each checked for its form:
    a value with a NUL or a lone surrogate is `MalformedValue`, the others `InvalidParameter` naming the field.
    Which model and webhook a tenant may use is decided later, by the submit."""
    for name, raw in values.items():
        problem = unstorable(name) or unstorable(raw)
        if problem is not None:
            raise MalformedValue(f"{name}: {problem}", field=name)
    task = values.get("task")
    model = values.get("model")
    if not task:
        raise InvalidParameter("task is required", field="task")
    if not model:
        raise InvalidParameter("model is required", field="model")
    chunk_raw = values.get("chunk_size")
    try:
        chunk_size = int(chunk_raw) if chunk_raw else None
    except ValueError:
        raise InvalidParameter("chunk_size must be an integer", field="chunk_size") from None
    # Given, it is the job's: 0 is no default's stand-in here, but a size out of range.
    if chunk_size is not None and not 1 <= chunk_size <= constants.MAX_CHUNK_SIZE:
        raise InvalidParameter(
            f"chunk_size must be an integer from 1 to {constants.MAX_CHUNK_SIZE}", field="chunk_size"
        )
    skip_raw = values.get("skip_invalid", "").strip().lower()
    if skip_raw not in _TRUE | _FALSE:
        raise InvalidParameter("skip_invalid must be true or false", field="skip_invalid")
    fmt: Format
    match values.get("format") or "auto":
        case "auto":
            fmt = media_format
        case "jsonl":
            fmt = "jsonl"
        case "csv":
            fmt = "csv"
        case _:
            raise InvalidParameter("format must be auto, jsonl or csv", field="format")
    webhook_url = values.get("webhook_url") or None
    # The scheme and length only: Client.submit decides which hosts a webhook may reach.
    if webhook_url is not None and (
        not webhook_url.lower().startswith(("http://", "https://")) or len(webhook_url) > MAX_WEBHOOK_URL_CHARS
    ):
        raise InvalidParameter(
            f"webhook_url must be an http(s) URL of at most {MAX_WEBHOOK_URL_CHARS} characters", field="webhook_url"
        )
    priority_raw = values.get("priority")
    try:
        priority = check_priority(int(priority_raw)) if priority_raw else DEFAULT_PRIORITY
    except ValueError:
        raise InvalidParameter("priority must be an integer from 0 to 9", field="priority") from None
    return SubmitOptions(
        priority=priority,
        deadline=parse_deadline(values.get("deadline")),
        task=parse_task(task),
        model=model,
        params=_json_object(values, "params") or {},
        metadata=_json_object(values, "metadata"),
        chunk_size=chunk_size,
        webhook_url=webhook_url,
        skip_invalid=skip_raw in _TRUE,
        format=fmt,
    )


_CREATE_BODY = {
    "requestBody": {
        "description": "The input file as the body (JSONL or CSV), or a multipart form with a `file` part and the "
        "options as fields.",
        "content": {
            **{t: {"schema": {"type": "string", "format": "binary"}} for t in ("application/jsonl", "text/csv")},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
        },
    }
}


@router.post(
    "/jobs",
    status_code=201,
    response_model=api.JobCreated,
    responses={
        200: {"model": api.Job, "description": "A repeated request (same Idempotency-Key): the job it made"},
        **error_responses(400, 409, 413, 415, 429),
    },
    openapi_extra=_CREATE_BODY,
)
async def create_job(
    request: Request,
    made: Made,
    caller: Caller,
    task: Annotated[str | None, Query(description="classification, question_answering, …")] = None,
    model: Annotated[str | None, Query(description="a registry name (GET /v1/models)")] = None,
    params: Annotated[str | None, Query(description="the task's parameters, a JSON object")] = None,
    metadata: Annotated[str | None, Query(description="string key-values, a JSON object")] = None,
    chunk_size: Annotated[str | None, Query(description="items per chunk")] = None,
    webhook_url: Annotated[str | None, Query(description="POSTed a signed event when the job ends")] = None,
    priority: Annotated[
        str | None, Query(description="0 to 9 (default 5): higher runs first within the tenant")
    ] = None,
    deadline: Annotated[
        str | None, Query(description='completion window: seconds, or "90m", "24h", "7d"; then the job expires')
    ] = None,
    skip_invalid: Annotated[str | None, Query(description="submit the valid lines, list the others")] = None,
    format: Annotated[str | None, Query(description="auto, jsonl or csv")] = None,
    idempotency_key: Annotated[str | None, Header(description="the same key and request: the same job")] = None,
) -> JSONResponse:
    """Create a job from the uploaded file: 201 with the Job (plus ``skipped``); 200 and ``Idempotent-Replayed:
    true`` for a repeated request with the same Idempotency-Key."""
    if idempotency_key is not None and not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY_CHARS:
        raise InvalidParameter(
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters", field="Idempotency-Key"
        )
    upload = await receive_upload(request, made.settings.max_upload_bytes, made.settings.upload_dir)
    try:
        values = {k: v for k, v in request.query_params.items()}
        values.update(upload.fields)
        options = parse_options(values, upload.format)
        submission = await run_in_threadpool(_submit, made, caller, options, upload, idempotency_key)
    finally:
        upload.discard()
    status = await run_in_threadpool(made.client.status, submission.job_id)
    if submission.replayed:
        return JSONResponse(status.model_dump(mode="json"), status_code=200, headers={"Idempotent-Replayed": "true"})
    created = api.JobCreated(
        **status.model_dump(),
        skipped=[api.LineProblem(line=e.line, field=e.field, message=e.message) for e in submission.skipped],
        skipped_total=submission.skipped_total,
    )
    return JSONResponse(created.model_dump(mode="json"), status_code=201)


def _submit(
    made: Runtime, caller: Principal, options: SubmitOptions, upload: Upload, idempotency_key: str | None
) -> Submission:
    # A tenant names a registry model, or a directory the operator allowed (INFERQ_MODEL_DIRS): refused alike.
    resolve_model(made.settings, options.model, options.task, tenant=True)
    return made.client.submit(
        options.task,
        options.model,
        upload.path,
        options.params,
        chunk_size=options.chunk_size,
        skip_invalid=options.skip_invalid,
        format=options.format,
        options=JobOptions(
            tenant=caller.tenant,
            metadata=options.metadata,
            webhook_url=options.webhook_url,
            priority=options.priority,
            deadline=options.deadline,
            idempotency_key=idempotency_key,
            request_hash=options.request_hash(upload.digest) if idempotency_key is not None else None,
        ),
    )


# -- read --------------------------------------------------------------------------------------------------------------


@router.get("/jobs/{job_id}", response_model=api.Job)
async def get_job(job_id: str, made: Made, authorization: Authorization = None) -> api.Job:
    """The Job: state, counts, timestamps, rate, ETA, metadata."""
    # What every poller calls: the key check and the read in one statement, in one trip to the thread pool
    # (`server.auth.job_for_key`) instead of a dependency's trip and the route's.
    return await anyio.to_thread.run_sync(job_for_key, made, authorization, job_id, limiter=made.poll_threads)


@router.get("/jobs", response_model=api.JobList, responses=error_responses(400))
def list_jobs(
    request: Request,
    made: Made,
    caller: Caller,
    limit: Annotated[int, Query(ge=1, le=constants.MAX_LIST_LIMIT)] = constants.DEFAULT_LIST_LIMIT,
    after: Annotated[str | None, Query(description="the last id of the previous page")] = None,
    state: JobState | None = None,
    task: str | None = None,
    model: str | None = None,
) -> api.JobList:
    """Jobs newest first, a page at a time. Filter on metadata with ``metadata[key]=value`` (or
    ``metadata.key=value``), as many as wanted."""
    metadata: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name.startswith("metadata[") and name.endswith("]"):
            metadata[name[len("metadata[") : -1]] = value
        elif name.startswith("metadata."):
            metadata[name[len("metadata.") :]] = value
    page = made.client.jobs(
        limit + 1,
        state,
        tenant=caller.scope(),
        task=parse_task(task).value if task else None,
        model=model,
        metadata=metadata,
        after=after,
    )
    has_more = len(page) > limit
    page = page[:limit]
    return api.JobList(data=page, has_more=has_more, next_after=page[-1].id if has_more else None)


# -- results -----------------------------------------------------------------------------------------------------------

ResultFormat = Literal["jsonl", "csv", "npy", "parquet"]
_MEDIA = {"jsonl": "application/jsonl", "csv": "text/csv; charset=utf-8"}

_LINES = {
    "schema": {"type": "string"},
    "description": "one JSON object a line: index, id, status, result, error (with top=true, the top result's typed "
    "columns too: label, score, answer, start, end, entity_count)",
}
_BINARY = {"schema": {"type": "string", "format": "binary"}}
_RESULTS_CONTENT = {
    "application/jsonl": _LINES,
    "text/csv": {"schema": {"type": "string"}},
    "application/octet-stream": _BINARY,
    api.NPY_TAR_MEDIA_TYPE: _BINARY,
}


@router.get(
    "/jobs/{job_id}/results",
    response_class=StreamingResponse,
    response_model=None,
    responses={
        200: {
            "description": "JSONL or CSV streamed; NPY (a tar of the matrix and its rows file when the request "
            "accepts application/x-tar) and Parquet as files",
            "content": _RESULTS_CONTENT,
        },
        **error_responses(400),
    },
)
def results(
    job_id: str,
    made: Made,
    caller: Caller,
    format: ResultFormat = "jsonl",
    label: str | None = None,
    min_score: float | None = None,
    failed: bool = False,
    state: ItemState | None = None,
    top: Annotated[bool, Query(description="JSONL: each line also carries the top result's typed columns")] = False,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> StreamingResponse | FileResponse:
    """The job's items in input order, streamed: JSONL and CSV exactly as ``inferq results`` writes them; NPY (the
    embedding matrix) and Parquet as files. NPY comes with its rows file, as a tar of ``matrix.npy`` and
    ``rows.jsonl``, to a request that accepts ``application/x-tar``."""
    status = made.client.status(job_id, tenant=caller.scope())
    with_rows = accepts(accept, api.NPY_TAR_MEDIA_TYPE)
    return _export(made, status, format, ResultFilter(label, min_score, failed, state), top=top, with_rows=with_rows)


def accepts(accept: str | None, media_type: str) -> bool:
    """Whether an ``Accept`` header names ``media_type``."""
    return accept is not None and any(p.split(";")[0].strip() == media_type for p in accept.split(","))


@router.get(
    "/jobs/{job_id}/errors",
    response_class=StreamingResponse,
    response_model=None,
    responses={200: {"description": "JSONL", "content": {"application/jsonl": _LINES}}},
)
def errors(job_id: str, made: Made, caller: Caller) -> StreamingResponse | FileResponse:
    """The job's failed items only, as JSONL lines of the results' shape."""
    status = made.client.status(job_id, tenant=caller.scope())
    return _export(made, status, "jsonl", ResultFilter(failed=True))


def _export(
    made: Runtime,
    status: JobStatus,
    fmt: ResultFormat,
    filters: ResultFilter,
    *,
    top: bool = False,
    with_rows: bool = False,
) -> StreamingResponse | FileResponse:
    from producer.export import export_jsonl, write_csv

    client = made.client
    job_id = status.id
    if fmt == "jsonl" and top:

        def top_jsonl(out: QueueWriter) -> None:
            rows = client.results(
                job_id, label=filters.label, min_score=filters.min_score, failed=filters.failed, state=filters.state
            )
            write_top_jsonl(rows, out)  # type: ignore[arg-type]

        return StreamingResponse(stream_text(top_jsonl), media_type=_MEDIA["jsonl"])
    if fmt == "jsonl":

        def jsonl(out: QueueWriter) -> None:
            with client.reader() as session:
                export_jsonl(session, job_id, out, filters)  # type: ignore[arg-type]

        return StreamingResponse(stream_text(jsonl), media_type=_MEDIA["jsonl"])
    if fmt == "csv":

        def csv(out: QueueWriter) -> None:
            rows = client.results(
                job_id, label=filters.label, min_score=filters.min_score, failed=filters.failed, state=filters.state
            )
            write_csv(rows, out, TaskName(status.task))  # type: ignore[arg-type]

        return StreamingResponse(stream_text(csv), media_type=_MEDIA["csv"])
    return _file_export(made, job_id, fmt, filters, with_rows=with_rows)


def write_top_jsonl(rows: Iterable[ResultRow], out: TextIO) -> None:
    """Each row as a compact JSON line with its typed top-result columns (`ResultRow.to_json`): what
    `RemoteClient.results` reads back into the same rows (`ResultRow.from_top_json`)."""
    encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    for row in rows:
        out.write(encode(row.to_json(top=True)) + "\n")


def _file_export(
    made: Runtime, job_id: str, fmt: ResultFormat, filters: ResultFilter, *, with_rows: bool = False
) -> FileResponse:
    """NPY and Parquet are written as files (their writers seek); the file is sent, then removed. An NPY export
    with its rows file goes as a tar of the two (``matrix.npy``, ``rows.jsonl``)."""
    from producer.export import export_npy, export_parquet

    folder = Path(tempfile.mkdtemp(prefix="inferq-export-"))
    media_type = "application/octet-stream"
    try:
        path = folder / f"{job_id}.{fmt}"
        with made.client.reader() as session:
            if fmt == "npy":
                done = export_npy(session, job_id, path, filters)
                if with_rows:
                    path, media_type = folder / f"{job_id}.npy.tar", api.NPY_TAR_MEDIA_TYPE
                    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
                        tar.add(done.path, arcname=api.NPY_TAR_MATRIX)
                        tar.add(done.rows_path, arcname=api.NPY_TAR_ROWS)
            else:
                export_parquet(session, job_id, path, filters)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return FileResponse(
        path,
        media_type=media_type,
        filename=path.name,
        background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True),
    )


# -- control -----------------------------------------------------------------------------------------------------------


@router.post("/jobs/{job_id}/cancel", response_model=api.Job)
def cancel(job_id: str, made: Made, caller: Caller) -> api.Job:
    """Cancel: unfinished items stop, finished results stay; a finished job comes back unchanged."""
    return made.client.cancel(job_id, tenant=caller.scope())


@router.post("/jobs/{job_id}/retry", status_code=201, response_model=api.Job, responses=error_responses(400, 409))
def retry(job_id: str, made: Made, caller: Caller) -> api.Job:
    """A new job with the failed items of the finished job ``job_id`` (same task, model, parameters, metadata and
    webhook; ``retry_of`` names the first job, which keeps its errors). 409 while the job runs; 400 when none of its
    items failed."""
    submission = made.client.retry(job_id, tenant=caller.scope())
    return made.client.status(submission.job_id)


@router.get("/jobs/{job_id}/webhooks", response_model=api.WebhookDeliveryList)
def webhooks(job_id: str, made: Made, caller: Caller) -> api.WebhookDeliveryList:
    """The job's webhook deliveries, each with every attempt."""

    made.client.status(job_id, tenant=caller.scope())
    with made.client.reader() as session:
        history = delivery_history(session, job_id)
    return api.WebhookDeliveryList.model_validate({"data": history})
