"""The dispatcher's state (``GET /v1/dispatcher``): who leads, when its last round ran and what it released, and per
queue the chunks waiting for a worker against the window, running, and held back (by tenants' caps among them).
Read from the row the leader rewrites (`producer.client.dispatcher_status`), so that any server process answers
without asking the workers."""

from __future__ import annotations

from fastapi import APIRouter

from inferq import api
from producer.client import dispatcher_status
from server.auth import Caller
from server.deps import Made
from server.errors import error_responses

router = APIRouter(tags=["dispatcher"], responses=error_responses(401, 422, 500, 503))


@router.get("/dispatcher", response_model=api.Dispatcher)
def get_dispatcher(made: Made, caller: Caller) -> api.Dispatcher:
    """The dispatcher's state: ``mode`` ``direct`` when chunks are sent at submit (no dispatcher); else the leading
    worker (``null``: nobody leads now, its last round too old), its last round, and each queue. A non-admin key
    sees every queue's counts but, among the tenants held back by their cap, its own only."""
    with made.client.reader() as session:
        return dispatcher_status(session, made.settings, tenant=caller.scope())
