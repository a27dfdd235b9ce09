"""inferq's errors: one rooted tree, each with a stable ``code`` stored on items and shown to users.

InferqError
├── ConfigurationError          configuration_error
├── InputError                  (never retried: the input itself is wrong)
│   ├── InvalidInput            invalid_input        a bad line in a submitted file
│   ├── InvalidParameter        invalid_parameter
│   │   ├── WebhookUrlRefused   webhook_url_refused  not http(s), or resolves to a private/loopback/… address
│   │   ├── MalformedValue      malformed_value      a NUL or a lone surrogate in a path, query or field
│   │   └── RemoteCodeRefused   remote_code_refused  a model that asks to run its own code
│   ├── UnknownTask             unknown_task
│   ├── UnknownModel            unknown_model
│   ├── JobNotFound             job_not_found
│   ├── FileNotFound            file_not_found       an OpenAI-API file that does not exist (or another tenant's)
│   ├── BatchNotFound           batch_not_found      an OpenAI-API batch that does not exist (or another tenant's)
│   ├── RequestError            (the HTTP API: a request that cannot be served as sent)
│   │   ├── Unauthorized            unauthorized            no key, an unknown key, a revoked key
│   │   ├── PayloadTooLarge         payload_too_large       an upload over INFERQ_MAX_UPLOAD_BYTES
│   │   ├── UnsupportedMediaType    unsupported_media_type
│   │   ├── IdempotencyConflict     idempotency_conflict    an Idempotency-Key reused for another request
│   │   ├── QuotaExceeded           quota_exceeded          the tenant's unfinished items would pass its quota
│   │   ├── JobNotFinished          job_not_finished        a retry of a job that has not ended
│   │   └── NothingToRetry          nothing_to_retry        a retry of a job without failed items
│   └── InvalidSignature        invalid_signature    a webhook's signature or timestamp does not verify
├── ModelError
│   ├── ModelLoadError          model_load_error     the model or tokenizer would not load
│   └── InferenceError          inference_error      the forward pass raised on this item
├── AttemptsExhausted           attempts_exhausted   a chunk kept failing; its items were given up
├── DeadlineExpired             expired              the job's deadline passed before the item ran
└── TransientError              (retried with backoff)
    ├── DatabaseUnavailable     database_unavailable
    ├── BrokerUnavailable       broker_unavailable
    ├── WorkersSaturated        workers_saturated    a synchronous call found no room, or its job did not end in time
    └── ServerUnavailable       server_unavailable   the HTTP API did not answer (or answered 5xx without a code)

A database that is unreachable or drops the connection surfaces as `DatabaseUnavailable` wherever inferq talks to
it: `inferq.db` converts the driver's error once, on every engine it makes. Every retry waits `backoff`.
"""

from __future__ import annotations

from dataclasses import dataclass


class InferqError(Exception):
    """Root of every error inferq raises on purpose.

    ``details``: what a caller can act on without parsing the message, as keywords given where the error is
    raised; an `InvalidParameter` names the parameter at fault (``details["field"]``), so that a form or an API
    in front of inferq can point at it."""

    code = "inferq_error"

    def __init__(self, message: str = "", **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class ConfigurationError(InferqError):
    code = "configuration_error"


class InputError(InferqError):
    """The user's input is wrong; retrying never helps."""

    code = "input_error"


@dataclass(frozen=True)
class LineError:
    """One problem in a submitted file: the 1-based line, the field, and what is wrong."""

    line: int
    field: str | None
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}" + (f", field {self.field!r}" if self.field else "")
        return f"{where}: {self.message}"


class InvalidInput(InputError):
    """A submitted file has bad lines. ``errors`` lists every one (up to a limit)."""

    code = "invalid_input"

    def __init__(self, errors: list[LineError], total_bad: int | None = None) -> None:
        self.errors = errors
        self.total_bad = total_bad if total_bad is not None else len(errors)
        shown = "\n".join(f"  {e}" for e in errors)
        more = self.total_bad - len(errors)
        tail = f"\n  … and {more} more" if more > 0 else ""
        super().__init__(f"{self.total_bad} invalid input line(s); nothing was submitted:\n{shown}{tail}")


class InvalidParameter(InputError):
    code = "invalid_parameter"


class WebhookUrlRefused(InvalidParameter):
    """A webhook URL inferq will not POST to (`inferq.webhooks.check_url`): not http(s), no host, a host that does
    not resolve, or one that resolves to an address users must not reach through inferq (private, loopback,
    link-local …). ``details["field"]`` is ``"webhook_url"``."""

    code = "webhook_url_refused"


class MalformedValue(InvalidParameter):
    """A value no part of inferq can store or compare: a NUL character (PostgreSQL's text cannot hold one) or a
    lone UTF-16 surrogate (not encodable as UTF-8), in a request's path, query or option field. ``details["field"]``
    names where it was."""

    code = "malformed_value"


class RemoteCodeRefused(InvalidParameter):
    """A model whose files ask for its own Python code (``auto_map`` in its config or tokenizer config, or
    ``trust_remote_code``): refused at submit, since workers never run such code. ``details["field"]`` is
    ``"model"``."""

    code = "remote_code_refused"


class UnknownTask(InputError):
    code = "unknown_task"


class UnknownModel(InputError):
    code = "unknown_model"


class JobNotFound(InputError):
    code = "job_not_found"


class FileNotFound(InputError):
    code = "file_not_found"


class BatchNotFound(InputError):
    code = "batch_not_found"


class RequestError(InputError):
    """A request to the HTTP API that cannot be served as it was sent (`server.errors` maps each to its status)."""

    code = "request_error"


class Unauthorized(RequestError):
    """No API key, a key that is not one, or a revoked key: all alike, so that a caller learns nothing more."""

    code = "unauthorized"


class PayloadTooLarge(RequestError):
    code = "payload_too_large"


class UnsupportedMediaType(RequestError):
    code = "unsupported_media_type"


class IdempotencyConflict(RequestError):
    """An ``Idempotency-Key`` the tenant already used, sent with another request."""

    code = "idempotency_conflict"


class QuotaExceeded(RequestError):
    """The tenant's unfinished items plus this job's would pass its ``max_queued_items``. ``retry_after``: seconds
    worth waiting before trying again."""

    code = "quota_exceeded"

    def __init__(self, message: str = "", *, retry_after: int = 30) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class JobNotFinished(RequestError):
    code = "job_not_finished"


class NothingToRetry(RequestError):
    code = "nothing_to_retry"


class InvalidSignature(InputError):
    """A received webhook does not verify (`inferq.webhooks.verify`): no or a wrong signature, or a timestamp
    outside the tolerance."""

    code = "invalid_signature"


class ModelError(InferqError):
    code = "model_error"


class ModelLoadError(ModelError):
    code = "model_load_error"


class InferenceError(ModelError):
    code = "inference_error"


class AttemptsExhausted(InferqError):
    code = "attempts_exhausted"


class DeadlineExpired(InferqError):
    """An item whose job's completion window (``--deadline``) ended before it ran; its job ended ``expired``."""

    code = "expired"


class TransientError(InferqError):
    """Something outside inferq is briefly unavailable; the operation is retried with `backoff`."""

    code = "transient_error"


class DatabaseUnavailable(TransientError):
    """The database is unreachable or dropped the connection (`inferq.db.is_transient_db_error`), raised from
    the driver's error. ``reason``: the driver's first line, which never holds the URL; ``kind``: the class name
    of the driver's error (``OperationalError`` …), for logs."""

    code = "database_unavailable"

    def __init__(self, message: str = "", *, reason: str | None = None, kind: str | None = None) -> None:
        # Both optional, so that a pickled copy (a Celery retry carries it across processes) is rebuilt.
        super().__init__(message)
        self.reason = reason if reason is not None else message
        self.kind = kind if kind is not None else type(self).__name__


class BrokerUnavailable(TransientError):
    code = "broker_unavailable"


class WorkersSaturated(TransientError):
    """A synchronous call of the OpenAI-compatible API (``POST /v1/embeddings`` …) found the server's synchronous
    calls all taken, or its job did not end within ``INFERQ_SYNC_TIMEOUT``. ``retry_after``: seconds worth waiting."""

    code = "workers_saturated"

    def __init__(self, message: str = "", *, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ServerUnavailable(TransientError):
    """inferq's HTTP API could not be reached (connection refused, reset, timed out) or answered a server error
    without one of inferq's codes (a proxy's 502, say)."""

    code = "server_unavailable"


def backoff(retries: int, base: float, cap: float) -> float:
    """Seconds before retry number ``retries + 1`` of anything transient: ``base`` doubled per retry so far,
    capped at ``cap``."""
    return min(cap, base * 2 ** min(retries, 32))
