"""The routes of the OpenAI-compatible API (mounted under ``/v1``): files, batches, embeddings, reranking and
inferq's other tasks. Each acts for the request's key (`server.auth`): files and batches belong to the key's
tenant, and another tenant's is ``404``, exactly as one that does not exist. Errors take OpenAI's shape
(`server.errors.openai_shaped`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from inferq import constants
from inferq.errors import InferenceError, InvalidParameter, MalformedValue
from inferq.keys import Principal
from inferq.schema import OpenAIBatch, OpenAIFile, as_utc, utcnow
from inferq.store import openai as stored
from inferq.store.results import ALL_ITEMS, result_rows
from inferq.task_names import TaskName
from inferq.task_specs import unstorable
from inferq.webhooks import check_url
from producer.client import check_metadata
from server.auth import Caller
from server.deps import Made, Runtime
from server.errors import error_responses
from server.openai import batches, files, models, sync
from server.openai.embeddings import count_pair_tokens, count_tokens, embedding_list, embedding_value
from server.uploads import receive_upload

router = APIRouter(tags=["openai"], responses=error_responses(401, 404, 422, 500, 503))

#: Purposes a file may be uploaded with (inferq runs batches only); a batch's output and error files have
#: ``batch_output``.
UPLOAD_PURPOSES = ("batch",)


# -- files -------------------------------------------------------------------------------------------------------------


def file_object(row: OpenAIFile) -> dict[str, Any]:
    """A file as OpenAI's ``FileObject``."""
    return {
        "id": row.id,
        "object": "file",
        "bytes": row.bytes,
        "created_at": int(as_utc(row.created_at).timestamp()),
        "filename": row.filename,
        "purpose": row.purpose,
        "status": "processed",
        "expires_at": int(as_utc(row.expires_at).timestamp()) if row.expires_at is not None else None,
        "status_details": None,
    }


def _page(objects: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    has_more = len(objects) > limit
    objects = objects[:limit]
    return {
        "object": "list",
        "data": objects,
        "has_more": has_more,
        "first_id": objects[0]["id"] if objects else None,
        "last_id": objects[-1]["id"] if objects else None,
    }


_UPLOAD_BODY = {
    "requestBody": {
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "purpose": {"type": "string"},
                        "expires_after[anchor]": {"type": "string", "enum": ["created_at"]},
                        "expires_after[seconds]": {
                            "type": "integer",
                            "minimum": constants.MIN_FILE_EXPIRY_SECONDS,
                            "maximum": constants.MAX_FILE_EXPIRY_SECONDS,
                        },
                    },
                    "required": ["file", "purpose"],
                }
            }
        }
    }
}


@router.post(
    "/files", response_model=models.FileObject, responses=error_responses(400, 413, 415), openapi_extra=_UPLOAD_BODY
)
async def create_file(request: Request, made: Made, caller: Caller) -> dict[str, Any]:
    """Upload a file (multipart: ``file`` and ``purpose=batch``): a JSONL of batch requests of at most
    `inferq.constants.MAX_FILE_LINES` lines, kept in the files directory (``INFERQ_FILES_DIR``). With
    ``expires_after[anchor]=created_at`` and ``expires_after[seconds]`` (an hour to 30 days), it expires that long
    after its upload."""
    upload = await receive_upload(request, made.settings.max_upload_bytes, made.settings.upload_dir)
    try:
        purpose = upload.fields.get("purpose")
        if purpose not in UPLOAD_PURPOSES:
            raise InvalidParameter("purpose must be 'batch' (inferq runs batches only)", field="purpose")
        expires_after = _upload_expiry(upload.fields)
        filename = (upload.filename or "upload.jsonl")[:255]
        problem = unstorable(filename)
        if problem is not None:
            raise MalformedValue(f"filename: {problem}", field="filename")
        row = await run_in_threadpool(_store_file, made, caller, upload.path, filename, purpose, expires_after)
    finally:
        upload.discard()
    return file_object(row)


class ExpiresAfter(BaseModel):
    """OpenAI's ``expires_after`` of a file (``output_expires_after`` of a batch's output files): that many seconds
    after the file's creation."""

    model_config = ConfigDict(extra="forbid")

    anchor: Literal["created_at"]
    seconds: int = Field(ge=constants.MIN_FILE_EXPIRY_SECONDS, le=constants.MAX_FILE_EXPIRY_SECONDS)


def _upload_expiry(fields: dict[str, str]) -> int | None:
    """``expires_after[seconds]`` of an upload's form (with ``expires_after[anchor]=created_at``), checked as
    `ExpiresAfter`; ``None`` when absent."""
    anchor, seconds = fields.get("expires_after[anchor]"), fields.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    try:
        return ExpiresAfter.model_validate({"anchor": anchor, "seconds": seconds}).seconds
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(p) for p in problem["loc"])
        raise InvalidParameter(f"expires_after.{where}: {problem['msg']}", field="expires_after") from None


def _store_file(
    made: Runtime, caller: Principal, path: Path, filename: str, purpose: str, expires_after: int | None
) -> OpenAIFile:
    file_id = files.new_id("file-")
    size, lines = files.take_upload(made.settings.files_dir, path, file_id)
    now = utcnow()
    row = OpenAIFile(
        id=file_id,
        tenant=caller.tenant,
        purpose=purpose,
        filename=filename,
        bytes=size,
        lines=lines,
        created_at=now,
        expires_at=batches.expiry(now, expires_after),
    )
    try:
        with made.client.sessions.begin() as session:
            stored.add_file(session, row)
    except BaseException:
        files.remove(made.settings.files_dir, file_id)
        raise
    return row


@router.get("/files", response_model=models.FileList)
def list_files(
    made: Made,
    caller: Caller,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    after: str | None = None,
    purpose: str | None = None,
) -> dict[str, Any]:
    """The tenant's files newest first, a page at a time (``after``: the last id of the previous page)."""
    with made.client.reader() as session:
        rows = stored.list_files(session, caller.scope(), limit=limit + 1, after=after, purpose=purpose)
        return _page([file_object(r) for r in rows], limit)


@router.get("/files/{file_id}", response_model=models.FileObject)
def get_file(file_id: str, made: Made, caller: Caller) -> dict[str, Any]:
    with made.client.reader() as session:
        return file_object(stored.file_of(session, file_id, caller.scope()))


@router.get(
    "/files/{file_id}/content",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}},
)
def file_content(file_id: str, made: Made, caller: Caller) -> StreamingResponse:
    """The file's bytes, streamed (an expired file's are not found, as the file)."""
    with made.client.reader() as session:
        row = stored.file_of(session, file_id, caller.scope())
    path = files.file_path(made.settings.files_dir, row.id)
    if not path.is_file():
        raise InvalidParameter(f"the bytes of file {file_id} are missing from the files directory", field="file_id")
    return StreamingResponse(files.read_pieces(path), media_type="application/octet-stream")


@router.delete("/files/{file_id}", response_model=models.FileDeleted)
def delete_file(file_id: str, made: Made, caller: Caller) -> dict[str, Any]:
    with made.client.sessions.begin() as session:
        row = stored.file_of(session, file_id, caller.scope())
        stored.delete_file(session, row.id)
    files.remove(made.settings.files_dir, file_id)
    return {"id": file_id, "object": "file", "deleted": True}


# -- batches -----------------------------------------------------------------------------------------------------------


class BatchRequest(BaseModel):
    """``POST /v1/batches``."""

    model_config = ConfigDict(extra="ignore")

    input_file_id: str
    endpoint: str
    completion_window: str = "24h"
    metadata: dict[str, str] | None = None
    #: inferq's own (``extra_body=`` in OpenAI's client): POSTed a signed event when the batch's job ends.
    webhook_url: str | None = None
    #: The output and error files expire that long after they are written.
    output_expires_after: ExpiresAfter | None = None


@router.post("/batches", response_model=models.Batch, responses=error_responses(400, 429))
def create_batch(body: BatchRequest, made: Made, caller: Caller) -> dict[str, Any]:
    """A batch of the input file's requests, answered at once ``validating``: its lines are checked in the
    background (`server.openai.validation`), then it is ``in_progress`` (one inferq job of its valid lines) or
    ``failed``."""
    if body.endpoint not in batches.BATCH_ENDPOINTS:
        raise InvalidParameter(f"endpoint must be one of: {', '.join(batches.BATCH_ENDPOINTS)}", field="endpoint")
    batches.completion_window(body.completion_window)
    metadata = check_metadata(body.metadata)
    if body.webhook_url is not None:
        check_url(body.webhook_url, made.settings)
    with made.client.reader() as session:
        source = stored.file_of(session, body.input_file_id, caller.scope())
    if source.purpose != "batch":
        raise InvalidParameter("the input file's purpose must be 'batch'", field="input_file_id")
    batch_id = files.new_id("batch_")
    validator = made.validation
    row = OpenAIBatch(
        id=batch_id,
        tenant=caller.tenant,
        endpoint=body.endpoint,
        input_file_id=source.id,
        completion_window=body.completion_window,
        meta=metadata,
        job_id=None,
        total_lines=source.lines,
        bad_lines=0,
        one_item_per_line=True,
        errors=None,
        created_at=utcnow(),
        webhook_url=body.webhook_url,
        output_expires_after=body.output_expires_after.seconds if body.output_expires_after else None,
        lease_owner=validator.owner,
        lease_until=validator.lease_end(),
    )
    with made.client.sessions.begin() as session:
        stored.add_batch(session, row)
    validator.start(batch_id)
    return batches.batch_object(row, None)


def _batch(made: Runtime, caller: Principal, batch_id: str) -> dict[str, Any]:
    """The batch as OpenAI shows it: taken over first if it is validating and its validator's lease ended (its
    server died), its output files written first if its job has ended."""
    with made.client.reader() as session:
        batch, job = stored.batch_with_job(session, batch_id, caller.scope())
    if batch.validated_at is None:
        if batch.lease_until is not None and as_utc(batch.lease_until) < utcnow():
            made.validation.take_over(batch_id)
        return batches.batch_object(batch, job)
    if batch.finalized_at is None and (job is None or job.state.finished):
        finalize(made, batch_id)
        with made.client.reader() as session:
            batch, job = stored.batch_with_job(session, batch_id, None)
    return batches.batch_object(batch, job)


def finalize(made: Runtime, batch_id: str) -> None:
    """Write the ended batch's output and error files and record them (`server.openai.batches`' notes)."""
    directory = made.settings.files_dir
    with made.client.reader() as session:
        batch, job = stored.batch_with_job(session, batch_id, None)
        if batch.finalized_at is not None or batch.validated_at is None:
            return
        if job is None:
            written = batches.write_outputs(directory, batch, None, iter(()), None)
        else:
            rows = result_rows(session, job.id, ALL_ITEMS, with_vectors=True)
            written = batches.write_outputs(directory, batch, job, iter(rows), job.model)
    try:
        with made.client.sessions.begin() as session:
            won = stored.finalize_batch(
                session,
                batch_id,
                files=written.files,
                output_file_id=written.output.file_id if written.output else None,
                error_file_id=written.errors.file_id if written.errors else None,
                completed=written.completed,
                failed=written.failed,
                now=utcnow(),
            )
    except BaseException:
        written.discard()
        raise
    if won:
        batches.plan_path(directory, batch_id).unlink(missing_ok=True)
    else:
        written.discard()


@router.get("/batches/{batch_id}", response_model=models.Batch)
def get_batch(batch_id: str, made: Made, caller: Caller) -> dict[str, Any]:
    return _batch(made, caller, batch_id)


@router.get("/batches", response_model=models.BatchList)
def list_batches(
    made: Made,
    caller: Caller,
    limit: Annotated[int, Query(ge=1, le=constants.MAX_LIST_LIMIT)] = constants.DEFAULT_LIST_LIMIT,
    after: str | None = None,
) -> dict[str, Any]:
    """The tenant's batches newest first, a page at a time (``after``: the last id of the previous page)."""
    with made.client.reader() as session:
        ids = [b.id for b in stored.list_batches(session, caller.scope(), limit=limit + 1, after=after)]
    return _page([_batch(made, caller, i) for i in ids], limit)


@router.post("/batches/{batch_id}/cancel", response_model=models.Batch)
def cancel_batch(batch_id: str, made: Made, caller: Caller) -> dict[str, Any]:
    """Cancel: requests not yet run end in the error file (``batch_cancelled``); finished ones stay. A batch still
    validating is ``cancelled`` at once, without a job."""
    with made.client.sessions.begin() as session:
        stored.batch_of(session, batch_id, caller.scope())
        job_id = stored.mark_cancelling(session, batch_id, utcnow())
    if job_id is not None:
        made.client.cancel(job_id)
    return _batch(made, caller, batch_id)


# -- embeddings --------------------------------------------------------------------------------------------------------


class EmbeddingRequest(BaseModel):
    """``POST /v1/embeddings``, as OpenAI takes it (token arrays as ``input`` excepted)."""

    model_config = ConfigDict(extra="ignore")

    input: str | list[str] = Field(description="a text, or a list of texts")
    model: str = Field(description="a registered embedding model (GET /v1/models)")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None


@router.post("/embeddings", response_model=models.EmbeddingList, responses=error_responses(400, 429))
def create_embeddings(body: EmbeddingRequest, made: Made, caller: Caller) -> dict[str, Any]:
    """Embed ``input`` now: a small job ahead of every batch (`server.openai.sync`)."""
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not 0 < len(texts) <= constants.MAX_SYNC_INPUTS:
        raise InvalidParameter(f"input holds 1 to {constants.MAX_SYNC_INPUTS} texts", field="input")
    params = {"dimensions": body.dimensions} if body.dimensions is not None else {}
    spec, status, rows = sync.run_job(made, caller, TaskName.EMBEDDING, body.model, list(texts), params)
    _raise_failure(status, rows)
    vectors = [embedding_value(r.result, r.vector, body.encoding_format) for r in rows]
    return embedding_list(body.model, vectors, count_tokens(spec, texts))


def _raise_failure(status: Any, rows: list[Any]) -> None:
    problem = sync.failed_items(status, rows)
    if problem is not None:
        raise InferenceError(f"{problem[0]}: {problem[1]}")


# -- reranking ---------------------------------------------------------------------------------------------------------


class RerankRequest(BaseModel):
    """``POST /v1/rerank``, in the shape text-embeddings-inference, infinity and vLLM share with Cohere and Jina."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(description="a registered rerank (cross-encoder) model")
    query: str
    documents: list[str] = Field(min_length=1, max_length=constants.MAX_LIST_TEXTS)
    top_n: int | None = Field(None, ge=1, description="documents returned, best first; all when absent")
    return_documents: bool = False


@router.post(
    "/rerank", response_model=models.Rerank, response_model_exclude_none=True, responses=error_responses(400, 429)
)
def rerank(body: RerankRequest, made: Made, caller: Caller) -> dict[str, Any]:
    """Score ``documents`` against ``query`` with a cross-encoder, best first: ``results`` of ``index``,
    ``relevance_score`` and, with ``return_documents``, ``document.text``."""
    params = {"top_k": body.top_n, "return_documents": body.return_documents}
    row = {"query": body.query, "documents": body.documents}
    spec, status, rows = sync.run_job(made, caller, TaskName.RERANK, body.model, [row], params)
    _raise_failure(status, rows)
    tokens = count_pair_tokens(spec, body.query, body.documents)
    return batches.rerank_body(body.model, f"rerank-{status.id}", rows[0].result, None, body.return_documents, tokens)


# -- inferq's other tasks ----------------------------------------------------------------------------------------------


class QuestionAnsweringInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str
    context: str


class TaskRequest(BaseModel):
    """A synchronous call of one of inferq's other tasks: ``input`` one item or a list of them, ``params`` the
    task's parameters (as ``inferq submit --params`` takes them)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    input: str | QuestionAnsweringInput | list[str] | list[QuestionAnsweringInput] = Field(
        description="a text (for question answering, a {question, context} object), or a list of them"
    )
    params: dict[str, Any] = Field(default_factory=dict)


#: Route → (task, the key each result goes under): `server.openai.batches.TASK_ENDPOINTS` without ``/v1``.
TASK_ROUTES: dict[str, tuple[TaskName, str]] = {
    path.removeprefix("/v1"): spec for path, spec in batches.TASK_ENDPOINTS.items()
}


def _items(task: TaskName, value: Any) -> list[Any]:
    """``input`` as the job's rows: a string per text, a ``{question, context}`` object per question."""
    many = value if isinstance(value, list) else [value]
    if not 0 < len(many) <= constants.MAX_SYNC_INPUTS:
        raise InvalidParameter(f"input holds 1 to {constants.MAX_SYNC_INPUTS} items", field="input")
    if task is TaskName.QUESTION_ANSWERING:
        if not all(isinstance(v, QuestionAnsweringInput) for v in many):
            raise InvalidParameter("input must be a {question, context} object, or a list of them", field="input")
        return [v.model_dump() for v in many]
    if not all(isinstance(v, str) for v in many):
        raise InvalidParameter("input must be a string or a list of strings", field="input")
    return list(many)


def _task_route(task: TaskName, key: str) -> Any:
    def call(body: TaskRequest, made: Made, caller: Caller) -> dict[str, Any]:
        _, status, rows = sync.run_job(made, caller, task, body.model, _items(task, body.input), body.params)
        _raise_failure(status, rows)
        return {
            "object": "list",
            "model": body.model,
            "data": [{"object": task.value, "index": i, key: r.result} for i, r in enumerate(rows)],
        }

    call.__doc__ = (
        f"Run {task.value} on ``input`` now (a small job ahead of every batch): ``data[i].{key}`` as inferq's "
        f"results give them (docs: tasks)."
    )
    call.__name__ = f"sync_{task.value}"
    return call


for _path, (_task, _key) in TASK_ROUTES.items():
    router.post(_path, response_model=models.TaskResults, responses=error_responses(400, 429))(_task_route(_task, _key))
