"""Jobs: create (a file upload), read, list, results, errors, cancel, retry, webhook deliveries.

Every route acts for the request's key (`server.auth`): a non-admin key sees its tenant's jobs only, and another
tenant's job is ``404 job_not_found``, exactly as a job that does not exist. Blocking work (validating and storing
a file, database reads) runs in the thread pool, so the event loop stays free.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.background import BackgroundTask

from inferq import constants
from inferq.errors import InvalidParameter
from inferq.keys import Principal
from inferq.states import ItemState, JobState
from inferq.task_specs import TaskName, parse_task
from inferq.webhooks import delivery_history
from producer.client import JobOptions, JobStatus, Submission
from producer.results import ResultFilter
from server.auth import Caller
from server.deps import Made, Runtime
from server.streams import QueueWriter, stream_text
from server.uploads import Format, Upload, receive_upload

router = APIRouter(tags=["jobs"])

#: Longest webhook URL accepted.
MAX_WEBHOOK_URL_CHARS = 2048
#: Longest Idempotency-Key (the width of `Job.idempotency_key`).
MAX_IDEMPOTENCY_KEY_CHARS = 255

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def job_json(status: JobStatus) -> dict[str, Any]:
    """The API's Job object: every key of `JobStatus.to_json` (the CLI's JSON) with the same values, and more."""
    return {
        "id": status.id,
        "object": "job",
        "tenant": status.tenant,
        **status.to_json(),
        "done": status.done,
        "metadata": status.metadata,
        "chunk_size": status.chunk_size,
        "eta_seconds": status.eta_seconds,
        "webhook_url": status.webhook_url,
        "retry_of": status.retry_of,
    }


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
    if not isinstance(value, dict):
        raise InvalidParameter(f"{name} must be a JSON object", field=name)
    return value


def parse_options(values: Mapping[str, str], media_format: Format) -> SubmitOptions:
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
    return SubmitOptions(
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


@router.post("/jobs", status_code=201, openapi_extra=_CREATE_BODY)
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
    upload = await receive_upload(request, made.settings.max_upload_bytes)
    try:
        values = {k: v for k, v in request.query_params.items()}
        values.update(upload.fields)
        options = parse_options(values, upload.format)
        submission = await run_in_threadpool(_submit, made, caller, options, upload, idempotency_key)
    finally:
        upload.discard()
    status = await run_in_threadpool(made.client.status, submission.job_id)
    body = job_json(status)
    if submission.replayed:
        return JSONResponse(body, status_code=200, headers={"Idempotent-Replayed": "true"})
    body["skipped"] = [{"line": e.line, "field": e.field, "message": e.message} for e in submission.skipped]
    body["skipped_total"] = submission.skipped_total
    return JSONResponse(body, status_code=201)


def _submit(
    made: Runtime, caller: Principal, options: SubmitOptions, upload: Upload, idempotency_key: str | None
) -> Submission:
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
            idempotency_key=idempotency_key,
            request_hash=options.request_hash(upload.digest) if idempotency_key is not None else None,
        ),
    )


# -- read --------------------------------------------------------------------------------------------------------------


@router.get("/jobs/{job_id}")
def get_job(job_id: str, made: Made, caller: Caller) -> dict[str, Any]:
    """The Job: state, counts, timestamps, rate, ETA, metadata."""
    return job_json(made.client.status(job_id, tenant=caller.scope()))


@router.get("/jobs")
def list_jobs(
    request: Request,
    made: Made,
    caller: Caller,
    limit: Annotated[int, Query(ge=1, le=constants.MAX_LIST_LIMIT)] = constants.DEFAULT_LIST_LIMIT,
    after: Annotated[str | None, Query(description="the last id of the previous page")] = None,
    state: JobState | None = None,
    task: str | None = None,
    model: str | None = None,
) -> dict[str, Any]:
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
    return {
        "object": "list",
        "data": [job_json(s) for s in page],
        "has_more": has_more,
        "next_after": page[-1].id if has_more else None,
    }


# -- results -----------------------------------------------------------------------------------------------------------

ResultFormat = Literal["jsonl", "csv", "npy", "parquet"]
_MEDIA = {"jsonl": "application/jsonl", "csv": "text/csv; charset=utf-8"}


@router.get("/jobs/{job_id}/results", response_class=StreamingResponse, response_model=None)
def results(
    job_id: str,
    made: Made,
    caller: Caller,
    format: ResultFormat = "jsonl",
    label: str | None = None,
    min_score: float | None = None,
    failed: bool = False,
    state: ItemState | None = None,
) -> StreamingResponse | FileResponse:
    """The job's items in input order, streamed: JSONL and CSV exactly as ``inferq results`` writes them; NPY (the
    embedding matrix) and Parquet as files."""
    status = made.client.status(job_id, tenant=caller.scope())
    return _export(made, status, format, ResultFilter(label, min_score, failed, state))


@router.get("/jobs/{job_id}/errors", response_class=StreamingResponse, response_model=None)
def errors(job_id: str, made: Made, caller: Caller) -> StreamingResponse | FileResponse:
    """The job's failed items only, as JSONL lines of the results' shape."""
    status = made.client.status(job_id, tenant=caller.scope())
    return _export(made, status, "jsonl", ResultFilter(failed=True))


def _export(
    made: Runtime, status: JobStatus, fmt: ResultFormat, filters: ResultFilter
) -> StreamingResponse | FileResponse:
    from producer.export import export_jsonl, write_csv

    client = made.client
    job_id = status.id
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
    return _file_export(made, job_id, fmt, filters)


def _file_export(made: Runtime, job_id: str, fmt: ResultFormat, filters: ResultFilter) -> FileResponse:
    """NPY and Parquet are written as files (their writers seek); the file is sent, then removed."""
    from producer.export import export_npy, export_parquet

    folder = Path(tempfile.mkdtemp(prefix="inferq-export-"))
    try:
        path = folder / f"{job_id}.{fmt}"
        with made.client.reader() as session:
            if fmt == "npy":
                export_npy(session, job_id, path, filters)
            else:
                export_parquet(session, job_id, path, filters)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return FileResponse(
        path,
        media_type="application/octet-stream",
        filename=path.name,
        background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True),
    )


# -- control -----------------------------------------------------------------------------------------------------------


@router.post("/jobs/{job_id}/cancel")
def cancel(job_id: str, made: Made, caller: Caller) -> dict[str, Any]:
    """Cancel: unfinished items stop, finished results stay; a finished job comes back unchanged."""
    return job_json(made.client.cancel(job_id, tenant=caller.scope()))


@router.post("/jobs/{job_id}/retry", status_code=201)
def retry(job_id: str, made: Made, caller: Caller) -> dict[str, Any]:
    """A new job with the failed items of the finished job ``job_id`` (same task, model, parameters, metadata and
    webhook; ``retry_of`` names the first job, which keeps its errors). 409 while the job runs; 400 when none of its
    items failed."""
    submission = made.client.retry(job_id, tenant=caller.scope())
    return job_json(made.client.status(submission.job_id))


@router.get("/jobs/{job_id}/webhooks")
def webhooks(job_id: str, made: Made, caller: Caller) -> dict[str, Any]:
    """The job's webhook deliveries, each with every attempt."""
    made.client.status(job_id, tenant=caller.scope())
    with made.client.reader() as session:
        history = delivery_history(session, job_id)
        data = [asdict(h) if is_dataclass(h) and not isinstance(h, type) else h for h in history]
    return {"object": "list", "data": jsonable_encoder(data)}
