"""Liveness and readiness, without a key: ``/healthz`` (the process answers) and ``/readyz`` (the database and the
broker answer). Neither body holds a URL or a secret: a failing part shows its error's code and the driver's error
class only."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from inferq import api
from inferq.errors import BrokerUnavailable, DatabaseUnavailable
from inferq.store.jobs import ping
from server.deps import Made, Runtime

router = APIRouter(tags=["health"])

#: Seconds the broker check waits for a connection.
BROKER_TIMEOUT = 3


@router.get("/healthz", response_model=api.Health)
async def healthz() -> api.Health:
    """The process is up."""
    return api.Health()


@router.get(
    "/readyz",
    response_class=JSONResponse,
    responses={
        200: {"model": api.Readiness, "description": "the database and the broker answer"},
        503: {"model": api.Readiness, "description": "the database or the broker is unreachable"},
    },
)
async def readyz(made: Made) -> JSONResponse:
    """The database and the broker answer: 200, else 503 naming the part that does not."""
    body: dict[str, Any] = {}
    errors: dict[str, dict[str, str]] = {}
    for part, check in (("database", _database), ("broker", _broker)):
        try:
            await run_in_threadpool(check, made)
            body[part] = "ok"
        except Exception as exc:
            body[part] = "unavailable"
            errors[part] = _describe(part, exc)
    if errors:
        body["errors"] = errors
    return JSONResponse(body, status_code=503 if errors else 200)


def _database(made: Runtime) -> None:
    with made.client.reader() as session:
        ping(session)


def _broker(made: Runtime) -> None:
    with made.client.celery.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=BROKER_TIMEOUT)


def _describe(part: str, exc: Exception) -> dict[str, str]:
    if isinstance(exc, DatabaseUnavailable):
        return {"code": exc.code, "message": f"database unreachable ({exc.kind})"}
    code = DatabaseUnavailable.code if part == "database" else BrokerUnavailable.code
    return {"code": code, "message": f"{part} unreachable ({type(exc).__name__})"}
