"""inferq's errors as HTTP answers: a status per error class, and one JSON body for every error::

    {"error": {"code": "<stable code from inferq.errors>", "message": "...",
               "lines": [{"line": 3, "field": "text", "message": "..."}]}}

``lines`` only for `InvalidInput`; ``field`` where an error names the parameter at fault.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from inferq.api import ErrorBody
from inferq.errors import (
    BatchNotFound,
    FileNotFound,
    IdempotencyConflict,
    InferqError,
    InputError,
    InvalidInput,
    InvalidParameter,
    JobNotFinished,
    JobNotFound,
    MalformedValue,
    NothingToRetry,
    PayloadTooLarge,
    QuotaExceeded,
    TransientError,
    Unauthorized,
    UnknownModel,
    UnknownTask,
    UnsupportedMediaType,
    WorkersSaturated,
)

log = logging.getLogger("inferq.server")

#: Each error class's HTTP status; the first class an error is an instance of decides.
STATUS: tuple[tuple[type[InferqError], int], ...] = (
    (Unauthorized, 401),
    (PayloadTooLarge, 413),
    (UnsupportedMediaType, 415),
    (IdempotencyConflict, 409),
    (JobNotFinished, 409),
    (QuotaExceeded, 429),
    (NothingToRetry, 400),
    (JobNotFound, 404),
    (FileNotFound, 404),
    (BatchNotFound, 404),
    (UnknownModel, 404),
    (UnknownTask, 400),
    (InvalidInput, 400),
    # A NUL or a lone surrogate: a value that cannot be a value at all, whatever the parameter.
    (MalformedValue, 400),
    # A parameter that does not parse (malformed JSON in params or metadata) or has a value out of its range.
    (InvalidParameter, 422),
    (InputError, 400),
    (TransientError, 503),
    (InferqError, 500),
)

#: Codes of the errors FastAPI and Starlette raise themselves (a route that does not exist, a wrong method).
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


#: What each error status means, as the OpenAPI document describes it.
_DESCRIPTIONS = {
    400: "Bad input or a request that cannot be done (invalid input lines, an unknown task, nothing to retry)",
    401: "No API key, or one the server does not know",
    404: "No such job (another tenant's job alike), model or route",
    409: "A conflict: the Idempotency-Key was used for another request, or the job has not ended",
    413: "The upload is too large",
    415: "The upload's media type is not JSONL or CSV",
    422: "A parameter does not parse or is out of its range",
    429: "The tenant's quota of unfinished items is reached (see Retry-After)",
    500: "An unexpected error",
    503: "The database or the broker is unreachable; or, for a synchronous call, the workers are saturated (see "
    "Retry-After)",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route for the error ``statuses`` it may answer: each the error body's schema."""
    return {status: {"model": ErrorBody, "description": _DESCRIPTIONS[status]} for status in statuses}


def status_of(exc: InferqError) -> int:
    return next(status for cls, status in STATUS if isinstance(exc, cls))


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


def printable(text: str) -> str:
    """``text`` as an answer may carry it: a lone surrogate (from a field name or value that a message quotes)
    written as its escape, since the answer's JSON is encoded as UTF-8."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def inferq_error_response(exc: InferqError) -> JSONResponse:
    extra: dict[str, Any] = {}
    if isinstance(exc, InvalidInput):
        extra["lines"] = [
            {"line": e.line, "field": None if e.field is None else printable(e.field), "message": printable(e.message)}
            for e in exc.errors
        ]
        extra["lines_total"] = exc.total_bad
        message = f"{exc.total_bad} invalid input line(s); nothing was submitted"
    else:
        message = printable(exc.message)
    field = exc.details.get("field")
    if isinstance(field, str):
        extra["field"] = printable(field)
    headers: dict[str, str] = {}
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, QuotaExceeded | WorkersSaturated):
        headers["Retry-After"] = str(exc.retry_after)
    status = status_of(exc)
    if status >= 500:
        log.warning("request failed: [%s] %s", exc.code, exc.message)
    return JSONResponse(error_body(exc.code, message, **extra), status_code=status, headers=headers)


#: Paths of the OpenAI-compatible API (`server.openai`): their errors take OpenAI's shape (`openai_shaped`).
OPENAI_PATHS = (
    "/v1/files",
    "/v1/batches",
    "/v1/embeddings",
    "/v1/rerank",
    "/v1/classifications",
    "/v1/zero-shot-classifications",
    "/v1/token-classifications",
    "/v1/question-answering",
    "/v1/fill-mask",
)


def is_openai_path(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in OPENAI_PATHS)


def openai_error_type(status: int) -> str:
    """OpenAI's ``error.type`` for an HTTP status."""
    if status == 401:
        return "authentication_error"
    if status == 404:
        return "not_found_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def openai_shaped(response: JSONResponse) -> JSONResponse:
    """inferq's error ``response`` in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, as the
    official clients read it (``lines`` of an `InvalidInput` kept beside them); headers unchanged, and the status
    too but for 422 (a parameter out of its range), which OpenAI answers as 400."""
    import json

    error = json.loads(bytes(response.body))["error"]
    shaped = {
        "message": error.get("message", ""),
        "type": openai_error_type(response.status_code),
        "param": error.get("field"),
        "code": error.get("code"),
    }
    if "lines" in error:
        shaped["lines"] = error["lines"]
    headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")}
    status = 400 if response.status_code == 422 else response.status_code
    return JSONResponse({"error": shaped}, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``. On the OpenAI-compatible API's paths the body takes OpenAI's shape
    (`openai_shaped`)."""

    def shaped(request: Request, response: JSONResponse) -> JSONResponse:
        return openai_shaped(response) if is_openai_path(request.url.path) else response

    async def on_inferq_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, InferqError)
        return shaped(request, inferq_error_response(exc))

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        field = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        message = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())[1:])}: {e.get('msg', '')}" for e in exc.errors()
        )
        return shaped(
            request,
            JSONResponse(error_body(InvalidParameter.code, message or "invalid request", field=field), status_code=422),
        )

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return shaped(
            request,
            JSONResponse(
                error_body(code, str(exc.detail)), status_code=exc.status_code, headers=dict(exc.headers or {})
            ),
        )

    async def on_disconnect(_request: Request, _exc: Exception) -> Response:
        # The client went away mid-upload: nobody reads this answer, and nothing was stored.
        return Response(status_code=400)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.error("unexpected error: %s", type(exc).__name__, exc_info=exc)
        return shaped(request, JSONResponse(error_body("internal_error", "internal server error"), status_code=500))

    app.add_exception_handler(InferqError, on_inferq_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(ClientDisconnect, on_disconnect)
    app.add_exception_handler(Exception, on_unexpected)
