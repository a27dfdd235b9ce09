"""Batches: an input file's lines checked as OpenAI checks them and turned into one inferq job; the output and
error files written from the job's results once it has ended.

A batch is created ``validating`` (``POST /v1/batches`` answers at once) and validated in the background
(`server.openai.validation`): every line of its input file is read once and checked
(``custom_id`` present, unique, at most 255 characters; ``method`` POST; ``url`` the batch's endpoint; ``body`` an
object with ``model`` and what the endpoint's synchronous route takes, `parse_body`; the model and the job's
parameters the same on every line, since one batch is one job), each input of a valid line checked as inferq checks a
submitted line. The valid lines' inputs become the
items of the batch's job, in order, each carrying its line's ``custom_id``; the refused lines are listed in the
batch's ``errors`` (the first `inferq.constants.MAX_BATCH_ERRORS_LISTED`) and go to its error file. Unlike OpenAI,
which fails a whole batch for one bad line, inferq runs the valid lines; a batch without any is ``failed``.

What the output needs besides the results is written beside the input, as the batch's *plan* (one JSON line per
input line, in the files directory): a valid line's ``custom_id``, input count, output options (an encoding, a
``top_n``) and token count, or a refused line's error-file line. Once the job has ended (succeeded, failed, cancelled or expired), the first read
of the batch walks the plan and the job's results together, both in input order, and writes the output file (one
line per line whose every input succeeded) and the error file (the others: the item's error, ``batch_cancelled``
or ``batch_expired`` for the items that never ran), in constant memory; the batch records the two files (a second
process that wrote them at the same time discards its own) and is ``completed``, ``cancelled``, ``expired`` or
``failed`` from then on.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import secrets
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from inferq import constants
from inferq.errors import InvalidParameter
from inferq.model_sources import resolve_model
from inferq.schema import Job, OpenAIBatch, OpenAIFile, as_utc, utcnow
from inferq.settings import ModelSpec, Settings
from inferq.states import JobState
from inferq.task_names import TaskName
from producer.client import JobOptions
from producer.inputs import MAX_ID_CHARS, Limits, validate_rows
from server.openai.embeddings import count_pair_tokens, embedding_list, embedding_value, token_counts
from server.openai.files import FileWriter, files_dir, new_id

#: inferq's other tasks' routes (synchronous, and inside a batch): the task each runs, and the key each item's
#: result goes under in ``data[i]``.
TASK_ENDPOINTS: dict[str, tuple[TaskName, str]] = {
    "/v1/classifications": (TaskName.CLASSIFICATION, "labels"),
    "/v1/zero-shot-classifications": (TaskName.ZERO_SHOT_CLASSIFICATION, "labels"),
    "/v1/token-classifications": (TaskName.TOKEN_CLASSIFICATION, "entities"),
    "/v1/question-answering": (TaskName.QUESTION_ANSWERING, "answers"),
    "/v1/fill-mask": (TaskName.FILL_MASK, "fills"),
}
#: The endpoints a batch may name, and the inferq task each runs.
BATCH_ENDPOINTS: dict[str, TaskName] = {
    "/v1/embeddings": TaskName.EMBEDDING,
    "/v1/rerank": TaskName.RERANK,
    **{path: task for path, (task, _) in TASK_ENDPOINTS.items()},
}

_WINDOW = re.compile(r"^([1-9][0-9]{0,3})([hm])$")


def completion_window(window: str) -> dt.timedelta:
    """``completion_window`` as a duration: OpenAI's ``24h``, or any whole number of hours or minutes (``1h``,
    ``30m``) up to a week; `InvalidParameter` otherwise."""
    found = _WINDOW.match(window)
    span = None
    if found is not None:
        n = int(found.group(1))
        span = dt.timedelta(hours=n) if found.group(2) == "h" else dt.timedelta(minutes=n)
    if span is None or span > dt.timedelta(days=7):
        raise InvalidParameter(
            "completion_window must be '24h' (or a whole number of hours or minutes, '1h', '30m', up to a week)",
            field="completion_window",
        )
    return span


def job_options_for(
    batch_id: str,
    tenant: str,
    metadata: dict[str, str] | None,
    window: str,
    *,
    priority: int | None = None,
    webhook_url: str | None = None,
) -> JobOptions:
    """The job options of a batch (``priority``: of a synchronous call's job instead): its tenant, its metadata
    and its id (``openai_batch``), ``completion_window`` as the job's deadline (`JobOptions.deadline`), the
    priority (`JobOptions.priority`; the default where ``None``), the webhook. The one place that maps a batch onto
    a job."""
    extra: dict[str, Any] = {}
    if window:
        extra["deadline"] = completion_window(window)
    if priority is not None:
        extra["priority"] = priority
    meta = dict(metadata or {})
    if batch_id:
        meta["openai_batch"] = batch_id
    return JobOptions(tenant=tenant, metadata=meta or None, webhook_url=webhook_url, **extra)


# -- checking the input ------------------------------------------------------------------------------------------------


@dataclass
class Prepared:
    """An input file read and checked: the job's inputs (an inferq JSONL file) and the batch's plan."""

    inputs: Path
    plan: Path
    model: str | None = None
    #: The job's parameters: every valid line's are the same (a batch is one job).
    params: dict[str, Any] = field(default_factory=dict)
    total_lines: int = 0
    bad_lines: int = 0
    good_lines: int = 0
    one_item_per_line: bool = True
    errors: list[dict[str, Any]] = field(default_factory=list)

    def discard(self) -> None:
        self.inputs.unlink(missing_ok=True)


class _Refused(Exception):
    def __init__(self, code: str, message: str, param: str | None = None, custom_id: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param, self.custom_id = code, message, param, custom_id


def _request_id() -> str:
    return f"batch_req_{secrets.token_hex(12)}"


def plan_path(directory: Path, batch_id: str) -> Path:
    return files_dir(directory) / f".{batch_id}.plan.jsonl"


#: Lines whose plan entries wait for their token counts, counted in one tokenizer call.
PLAN_FLUSH_LINES = 1024


class _Plan:
    """The plan file being written: entries in line order, a valid line's waiting until its token count is known
    (`PLAN_FLUSH_LINES` lines counted at a time)."""

    def __init__(self, out: TextIO, spec: ModelSpec | None) -> None:
        self.out = out
        self.spec = spec
        self.pending: list[tuple[dict[str, Any], list[str]]] = []
        self.encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

    def add(self, entry: dict[str, Any], texts: list[str]) -> None:
        self.pending.append((entry, texts))
        if len(self.pending) >= PLAN_FLUSH_LINES:
            self.flush()

    def flush(self) -> None:
        texts = [t for _, line_texts in self.pending for t in line_texts]
        counts = iter(token_counts(self.spec, texts) if self.spec is not None else [0] * len(texts))
        for entry, line_texts in self.pending:
            if line_texts:
                entry["t"] = sum(next(counts) for _ in line_texts)
            self.out.write(self.encode(entry) + "\n")
        self.pending.clear()


def prepare(
    settings: Settings, source: Path, endpoint: str, plan: Path, heartbeat: Callable[[], None] | None = None
) -> Prepared:
    """Read the input file at ``source`` once, checking each line (see the module's notes): the valid lines'
    inputs go to a temporary inferq JSONL file, every line's entry to ``plan``. ``heartbeat`` is called every
    `PLAN_FLUSH_LINES` lines (a validator renews its lease there, and stops by raising)."""
    task = BATCH_ENDPOINTS[endpoint]
    fd, name = tempfile.mkstemp(prefix="inferq-batch-", suffix=".jsonl", dir=settings.upload_dir)
    prepared = Prepared(inputs=Path(name), plan=plan)
    limits = Limits(max_text_chars=settings.max_text_chars, max_items=settings.max_items)
    seen: set[bytes] = set()
    encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    try:
        with open(fd, "w", encoding="utf-8") as inputs, plan.open("w", encoding="utf-8") as planned:
            entries = _Plan(planned, None)
            for number, raw in enumerate(_lines(source), start=1):
                prepared.total_lines += 1
                if heartbeat is not None and number % PLAN_FLUSH_LINES == 0:
                    heartbeat()
                try:
                    custom_id, body, model = _check_line(raw, endpoint, seen)
                    parsed = parse_body(task, body, custom_id)
                    if prepared.model is None:
                        prepared.model, prepared.params = model, parsed.params
                        entries.spec = resolve_model(settings, model, task, tenant=True)
                    elif model != prepared.model:
                        raise _Refused(
                            "mismatched_model",
                            f"model {model!r} differs from the batch's {prepared.model!r}: a batch runs one model",
                            "body.model",
                            custom_id,
                        )
                    elif parsed.params != prepared.params:
                        raise _Refused(
                            "mismatched_params",
                            "the parameters differ from the batch's first line's: a batch runs one set of them",
                            parsed.params_field,
                            custom_id,
                        )
                    checked = validate_rows([(number, r) for r in parsed.rows], task, limits)
                    if checked.errors:
                        raise _Refused("invalid_input", checked.errors[0].message, "body.input", custom_id)
                except _Refused as refused:
                    prepared.bad_lines += 1
                    if len(prepared.errors) < constants.MAX_BATCH_ERRORS_LISTED:
                        prepared.errors.append(
                            {"code": refused.code, "message": refused.message, "param": refused.param, "line": number}
                        )
                    line = {
                        "id": _request_id(),
                        "custom_id": refused.custom_id,
                        "response": None,
                        "error": {"code": refused.code, "message": f"line {number}: {refused.message}"},
                    }
                    entries.add({"e": line}, [])
                    continue
                prepared.good_lines += 1
                if len(parsed.rows) != 1:
                    prepared.one_item_per_line = False
                for row in parsed.rows:
                    fields = row if isinstance(row, dict) else {"text": row}
                    inputs.write(encode({"id": custom_id, **fields}) + "\n")
                entry: dict[str, Any] = {"c": custom_id, "n": len(parsed.rows), "o": parsed.out}
                if task is TaskName.RERANK and entries.spec is not None:
                    pair = parsed.rows[0]
                    entry["t"] = count_pair_tokens(entries.spec, pair["query"], pair["documents"])
                entries.add(entry, parsed.token_texts)
            entries.flush()
    except BaseException:
        prepared.discard()
        plan.unlink(missing_ok=True)
        raise
    return prepared


def _lines(source: Path) -> Iterator[bytes]:
    with source.open("rb") as f:
        yield from f


def _check_line(raw: bytes, endpoint: str, seen: set[bytes]) -> tuple[str, dict[str, Any], str]:
    """A line's ``custom_id``, body and model, or `_Refused` saying what is wrong."""
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise _Refused("invalid_json_line", f"the line is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise _Refused("invalid_json_line", "the line is not a JSON object")
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise _Refused("missing_custom_id", "custom_id must be a non-empty string", "custom_id")
    if len(custom_id) > MAX_ID_CHARS or "\x00" in custom_id:
        raise _Refused(
            "invalid_custom_id", f"custom_id must be at most {MAX_ID_CHARS} characters, without NUL", "custom_id"
        )
    digest = hashlib.blake2b(custom_id.encode("utf-8", "surrogatepass"), digest_size=16).digest()
    if digest in seen:
        raise _Refused(
            "duplicate_custom_id", f"custom_id {custom_id!r} is used by an earlier line", "custom_id", custom_id
        )
    seen.add(digest)
    if obj.get("method") != "POST":
        raise _Refused("invalid_method", "method must be POST", "method", custom_id)
    if obj.get("url") != endpoint:
        raise _Refused("mismatched_url", f"url must be the batch's endpoint, {endpoint}", "url", custom_id)
    body = obj.get("body")
    if not isinstance(body, dict):
        raise _Refused("invalid_body", "body must be a JSON object", "body", custom_id)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _Refused("missing_model", "body.model must be the name of a model", "body.model", custom_id)
    return custom_id, body, model


@dataclass(frozen=True)
class Parsed:
    """A valid line's body as the job takes it."""

    #: The job's items of the line: texts, or objects of the task's fields.
    rows: list[Any]
    #: The job's parameters the line asks for (the same on every line of a batch), and the field that sets them.
    params: dict[str, Any]
    params_field: str
    #: What the line's output needs besides its results (an encoding, a ``top_n`` …).
    out: dict[str, Any]
    #: The texts whose tokens the line's ``usage`` counts.
    token_texts: list[str]


def parse_body(task: TaskName, body: dict[str, Any], custom_id: str) -> Parsed:
    """A request's body for ``task``'s endpoint, as the synchronous route takes it, or `_Refused`."""
    if task is TaskName.EMBEDDING:
        texts = input_texts(body.get("input"), custom_id)
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise _Refused(
                "invalid_encoding_format", "encoding_format must be float or base64", "body.encoding_format", custom_id
            )
        dimensions = body.get("dimensions")
        if dimensions is not None and (
            isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1
        ):
            raise _Refused("invalid_dimensions", "dimensions must be a positive integer", "body.dimensions", custom_id)
        params = {"dimensions": dimensions} if dimensions is not None else {}
        return Parsed(list(texts), params, "body.dimensions", {"f": encoding}, list(texts))
    if task is TaskName.RERANK:
        query, documents, top_n = body.get("query"), body.get("documents"), body.get("top_n")
        if not isinstance(query, str):
            raise _Refused("invalid_input", "query must be a string", "body.query", custom_id)
        if (
            not isinstance(documents, list)
            or not 0 < len(documents) <= constants.MAX_LIST_TEXTS
            or not all(isinstance(d, str) for d in documents)
        ):
            raise _Refused(
                "invalid_input",
                f"documents must be a list of 1 to {constants.MAX_LIST_TEXTS} strings",
                "body.documents",
                custom_id,
            )
        if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1):
            raise _Refused("invalid_input", "top_n must be a positive integer", "body.top_n", custom_id)
        out = {"top_n": top_n, "docs": bool(body.get("return_documents", False))}
        # Every document ranked and returned with its text; each line's output keeps its own top_n and texts.
        return Parsed([{"query": query, "documents": documents}], {"return_documents": True}, "body", out, [])
    params = body.get("params") or {}
    if not isinstance(params, dict):
        raise _Refused("invalid_body", "params must be a JSON object", "body.params", custom_id)
    value = body.get("input")
    many = value if isinstance(value, list) else [value]
    if not 0 < len(many) <= constants.MAX_SYNC_INPUTS:
        raise _Refused("invalid_input", f"input holds 1 to {constants.MAX_SYNC_INPUTS} items", "body.input", custom_id)
    if task is TaskName.QUESTION_ANSWERING:
        if not all(
            isinstance(v, dict) and set(v) == {"question", "context"} and all(isinstance(x, str) for x in v.values())
            for v in many
        ):
            raise _Refused(
                "invalid_input",
                "input must be a {question, context} object, or a list of them",
                "body.input",
                custom_id,
            )
    elif not all(isinstance(v, str) for v in many):
        raise _Refused("invalid_input", "input must be a string or a list of strings", "body.input", custom_id)
    return Parsed(list(many), params, "body.params", {}, [])


def input_texts(value: Any, custom_id: str | None = None) -> list[str]:
    """``input`` of an embedding request: a string, or a list of 1 to `inferq.constants.MAX_SYNC_INPUTS` strings
    (token arrays are not taken)."""
    if isinstance(value, str):
        return [value]
    if (
        isinstance(value, list)
        and 0 < len(value) <= constants.MAX_SYNC_INPUTS
        and all(isinstance(t, str) for t in value)
    ):
        return value
    raise _Refused(
        "invalid_input",
        f"input must be a string or a list of 1 to {constants.MAX_SYNC_INPUTS} strings (token arrays are not taken)",
        "body.input",
        custom_id,
    )


# -- the batch object --------------------------------------------------------------------------------------------------


def _ts(value: dt.datetime | None) -> int | None:
    return None if value is None else int(as_utc(value).timestamp())


def batch_status(batch: OpenAIBatch, job: Job | None) -> str:
    """OpenAI's status of the batch: ``validating`` until its input is checked and its job made; without a job,
    ``cancelled`` when cancelled while validating, else ``failed`` (no valid line, or a batch-wide error); ``failed``
    when the job failed as a whole; once the output files are written, ``completed``, ``cancelled`` or ``expired``
    as the job ended; before, ``cancelling`` after a cancel, ``finalizing`` once the job ended, ``in_progress``
    while it runs."""
    if batch.validated_at is None:
        return "validating"
    if job is None:
        return "cancelled" if batch.cancelling_at is not None else "failed"
    if job.state is JobState.FAILED:
        return "failed"
    if batch.finalized_at is not None:
        if job.state is JobState.CANCELLED:
            return "cancelled"
        if job.state is JobState.EXPIRED:
            return "expired"
        return "completed"
    if job.state.finished:
        return "finalizing"
    if batch.cancelling_at is not None:
        return "cancelling"
    return "in_progress"


def batch_object(batch: OpenAIBatch, job: Job | None) -> dict[str, Any]:
    """The batch as OpenAI's ``Batch`` object."""
    status = batch_status(batch, job)
    created = as_utc(batch.created_at)
    finished = _ts(job.finished_at) if job is not None else _ts(batch.validated_at)
    if batch.completed_lines is not None:
        completed, failed = batch.completed_lines, batch.failed_lines or 0
    elif job is not None and batch.one_item_per_line:
        completed, failed = job.succeeded, batch.bad_lines + job.failed
    else:
        completed, failed = 0, batch.bad_lines
    errors = list(batch.errors or [])
    if job is not None and job.state is JobState.FAILED and job.error_code:
        errors.append({"code": job.error_code, "message": job.error or "", "param": None, "line": None})
    return {
        "id": batch.id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "errors": {"object": "list", "data": errors} if errors else None,
        "input_file_id": batch.input_file_id,
        "completion_window": batch.completion_window,
        "status": status,
        "output_file_id": batch.output_file_id,
        "error_file_id": batch.error_file_id,
        "created_at": _ts(created),
        "in_progress_at": _ts(job.created_at) if job is not None else None,
        "expires_at": _ts(created + completion_window(batch.completion_window)),
        "finalizing_at": finished if status in ("finalizing", "completed", "cancelled", "expired") else None,
        "completed_at": _ts(batch.finalized_at) if status == "completed" else None,
        "failed_at": finished if status == "failed" else None,
        "expired_at": finished if status == "expired" else None,
        "cancelling_at": _ts(batch.cancelling_at),
        "cancelled_at": finished if status == "cancelled" else None,
        "request_counts": {"total": batch.total_lines, "completed": completed, "failed": failed},
        "metadata": batch.meta,
        "model": job.model if job is not None else None,
    }


def expiry(created: dt.datetime, seconds: int | None) -> dt.datetime | None:
    """When a file created at ``created`` expires, ``seconds`` after it (``None``: never)."""
    return None if seconds is None else created + dt.timedelta(seconds=seconds)


# -- the output and error files ----------------------------------------------------------------------------------------


@dataclass
class Written:
    """A batch's output and error files, written, not yet recorded."""

    files: list[OpenAIFile]
    output: FileWriter | None
    errors: FileWriter | None
    completed: int
    failed: int

    def discard(self) -> None:
        for writer in (self.output, self.errors):
            if writer is not None:
                writer.discard()


def write_outputs(
    directory: Path, batch: OpenAIBatch, job: Job | None, rows: Iterator[Any], model: str | None
) -> Written:
    """Walk the batch's plan and its job's result rows (``index, client_id, status, result, error_code,
    error_message, …, vector`` in input order; none without a job) and write the output and error files (see the
    module's notes). An empty file is not kept."""
    encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    output = FileWriter(directory, new_id("file-"))
    errors = FileWriter(directory, new_id("file-"))
    completed = failed = 0
    never_ran = "batch_expired" if job is not None and job.state is JobState.EXPIRED else None
    task = BATCH_ENDPOINTS[batch.endpoint]
    try:
        with plan_path(directory, batch.id).open("r", encoding="utf-8") as plan:
            for entry_text in plan:
                entry = json.loads(entry_text)
                if "e" in entry:
                    errors.write((encode(entry["e"]) + "\n").encode())
                    failed += 1
                    continue
                items = [next(rows, None) for _ in range(entry["n"])]
                problem = _problem(items, job, never_ran)
                if problem is None:
                    found = [r for r in items if r is not None]
                    line = {
                        "id": _request_id(),
                        "custom_id": entry["c"],
                        "response": {
                            "status_code": 200,
                            "request_id": secrets.token_hex(16),
                            "body": response_body(task, model or "", found, entry["o"], entry.get("t", 0)),
                        },
                        "error": None,
                    }
                    output.write((encode(line) + "\n").encode())
                    completed += 1
                else:
                    line = {
                        "id": _request_id(),
                        "custom_id": entry["c"],
                        "response": None,
                        "error": {"code": problem[0], "message": problem[1]},
                    }
                    errors.write((encode(line) + "\n").encode())
                    failed += 1
        kept: list[OpenAIFile] = []
        writers: list[FileWriter | None] = []
        for writer, kind in ((output, "output"), (errors, "error")):
            if writer.lines == 0:
                writer.discard()
                writers.append(None)
                continue
            writer.commit()
            writers.append(writer)
            now = utcnow()
            kept.append(
                OpenAIFile(
                    id=writer.file_id,
                    tenant=batch.tenant,
                    purpose="batch_output",
                    filename=f"{batch.id}_{kind}.jsonl",
                    bytes=writer.bytes,
                    lines=writer.lines,
                    created_at=now,
                    expires_at=expiry(now, batch.output_expires_after),
                )
            )
    except BaseException:
        output.discard()
        errors.discard()
        raise
    return Written(kept, writers[0], writers[1], completed, failed)


def response_body(task: TaskName, model: str, items: list[Any], out: dict[str, Any], tokens: int) -> dict[str, Any]:
    """What the synchronous route answers for a line's request, from its items' result rows."""
    if task is TaskName.EMBEDDING:
        return embedding_list(model, [embedding_value(r.result, r.vector, out["f"]) for r in items], tokens)
    if task is TaskName.RERANK:
        return rerank_body(model, f"rerank-{secrets.token_hex(12)}", items[0].result, out["top_n"], out["docs"], tokens)
    key = next(k for t, k in TASK_ENDPOINTS.values() if t is task)
    return {
        "object": "list",
        "model": model,
        "data": [{"object": task.value, "index": i, key: r.result} for i, r in enumerate(items)],
    }


def rerank_body(
    model: str, rerank_id: str, ranked: list[dict[str, Any]], top_n: int | None, with_documents: bool, tokens: int
) -> dict[str, Any]:
    """The rerank answer (the shape TEI, infinity and vLLM share with Cohere and Jina) from an item's ranking."""
    results = []
    for r in ranked[:top_n] if top_n is not None else ranked:
        result: dict[str, Any] = {"index": r["index"], "relevance_score": r["score"]}
        if with_documents:
            result["document"] = {"text": r.get("document")}
        results.append(result)
    return {
        "id": rerank_id,
        "object": "rerank",
        "model": model,
        "results": results,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _problem(items: list[Any | None], job: Job | None, never_ran: str | None) -> tuple[str, str] | None:
    """Why a valid line did not succeed (code, message), or ``None`` when every input of it did. An item that is
    not there (the job was purged before the batch's files were written) is ``job_purged``."""
    for item in items:
        if item is None:
            return "job_purged", "the batch's job was removed (retention) before its results were written"
        if item.status == "succeeded":
            continue
        if item.status == "failed":
            return item.error_code or "inference_error", item.error_message or ""
        if item.status == "cancelled":
            return "batch_cancelled", "the batch was cancelled before this request ran"
        if job is not None and job.state is JobState.FAILED:
            return job.error_code or "job_failed", job.error or "the batch's job failed"
        return never_ran or "batch_expired", "the batch ended before this request ran"
    return None
