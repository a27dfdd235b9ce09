"""Who a request comes from: ``Authorization: Bearer iq_<id>_<secret>``, checked against the key's row on every
request (`inferq.keys.authenticate`: one primary-key read, then a constant-time comparison), so that a revoked key
is refused from the next request on. The key is never logged."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Header
from sqlalchemy import Row

from inferq import api
from inferq.errors import DatabaseUnavailable, JobNotFound, Unauthorized
from inferq.keys import Principal, authenticate, checked_key, key_id_of
from inferq.states import JobState
from inferq.store import auth
from producer.client import DIRECT_DISPATCH, job_status, with_position
from server.deps import Runtime, runtime

#: The request header that carries the key.
Authorization = Annotated[str | None, Header(description="Bearer iq_<id>_<secret>")]

_INVALID = "the API key is not valid (unknown, malformed or revoked)"


def bearer_key(authorization: str | None) -> str:
    """The key of an ``Authorization: Bearer <key>`` header, or `Unauthorized`."""
    if not authorization:
        raise Unauthorized("an API key is needed: send `Authorization: Bearer <key>`")
    scheme, _, key = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("send the API key as `Authorization: Bearer <key>`")
    return key.strip()


def principal(made: Annotated[Runtime, Depends(runtime)], authorization: Authorization = None) -> Principal:
    """The request's principal, or `Unauthorized` (no key, a malformed, unknown or revoked key: all alike). A plain
    function: FastAPI runs it in its thread pool, off the event loop."""
    key = bearer_key(authorization)
    with made.client.reader() as session:
        found = authenticate(session, key)
    if found is None:
        raise Unauthorized(_INVALID)
    return found


Caller = Annotated[Principal, Depends(principal)]


def job_for_key(made: Runtime, authorization: str | None, job_id: str) -> api.Job:
    """The job ``job_id`` as the request's key may see it: `Unauthorized` for a key that is not valid (as
    `principal` decides), `JobNotFound` for a job that does not exist or is another tenant's. The key check and the
    job's read are one statement (`inferq.store.auth.key_and_job`) on one autocommit connection: the route every
    poller calls, kept to one round trip and one trip to a worker thread."""
    key = bearer_key(authorization)
    key_id = key_id_of(key)
    if key_id is None:
        raise Unauthorized(_INVALID)
    try:
        row = _key_and_job(made, key_id, job_id)
    except DatabaseUnavailable:
        # The engine does not ping a connection before handing it out: one the database dropped (a restart) fails
        # its statement, and the pool replaces its connections; one more try, then the error stands.
        row = _key_and_job(made, key_id, job_id)
    row = checked_key(key, row)
    if row is None:
        raise Unauthorized(_INVALID)
    if row.id is None:
        raise JobNotFound(f"no job {job_id!r}")
    status = job_status(row)
    if status.state in (JobState.QUEUED, JobState.RUNNING):
        if made.settings.fair_dispatch:
            # Its place in line (`inferq.store.dispatch.chunks_ahead`, while it waits) and the dispatcher's state on
            # its queue (one read of the dispatcher's row): a few reads more, only while the job is unfinished.
            with made.client.reader() as session:
                status = with_position(session, status, made.settings)
        else:
            status = status.model_copy(update={"dispatcher": DIRECT_DISPATCH})
    return status


def _key_and_job(made: Runtime, key_id: str, job_id: str) -> Row[Any] | None:
    with made.polls.connect() as conn:
        return auth.key_and_job(conn, key_id, job_id)
