"""The OpenAI-compatible API's objects, as OpenAI's reference names and shapes them (and the official client
parses them): one pydantic class per resource, the routes' ``response_model``, so that the OpenAPI document says
what each route answers."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    #: Unix seconds.
    created_at: int
    filename: str
    #: ``batch`` (uploaded) or ``batch_output`` (a batch's output or error file).
    purpose: str
    status: Literal["uploaded", "processed", "error"] = "processed"
    expires_at: int | None = None
    status_details: str | None = None


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    has_more: bool
    first_id: str | None
    last_id: str | None


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


class BatchError(BaseModel):
    """A refused input line: an OpenAI code (``invalid_json_line``, ``duplicate_custom_id``, ``mismatched_url`` …)
    or inferq's, the message, the field at fault and the 1-based line."""

    code: str | None
    message: str | None
    param: str | None
    line: int | None


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchError]


class BatchRequestCounts(BaseModel):
    total: int
    completed: int
    failed: int


class Batch(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: BatchErrors | None
    input_file_id: str
    completion_window: str
    status: Literal[
        "validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"
    ]
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    in_progress_at: int | None
    expires_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    request_counts: BatchRequestCounts
    metadata: dict[str, str] | None
    #: The model of the batch's requests (``None`` when no line was valid).
    model: str | None = None


class BatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Batch]
    has_more: bool
    first_id: str | None
    last_id: str | None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    #: Floats, or the base64 of the little-endian float32 bytes (``encoding_format=base64``).
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class RerankDocument(BaseModel):
    text: str | None


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    #: With ``return_documents`` only.
    document: RerankDocument | None = None


class Rerank(BaseModel):
    id: str
    object: Literal["rerank"] = "rerank"
    model: str
    results: list[RerankResult]
    usage: EmbeddingUsage


class TaskResults(BaseModel):
    """A task route's answer: ``data[i]`` holds ``object`` (the task), ``index`` and the result under the route's
    key (``labels``, ``entities``, ``answers``, ``fills``), as inferq's results give it."""

    object: Literal["list"] = "list"
    model: str
    data: list[dict[str, Any]] = Field(description="one object per input, in order")
