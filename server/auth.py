"""Who a request comes from: ``Authorization: Bearer iq_<id>_<secret>``, checked against the key's row on every
request (`inferq.keys.authenticate`: one primary-key read, then a constant-time comparison), so that a revoked key
is refused from the next request on. The key is never logged."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header

from inferq.errors import Unauthorized
from inferq.keys import Principal, authenticate
from server.deps import Runtime, runtime


def principal(
    made: Annotated[Runtime, Depends(runtime)],
    authorization: Annotated[str | None, Header(description="Bearer iq_<id>_<secret>")] = None,
) -> Principal:
    """The request's principal, or `Unauthorized` (no key, a malformed, unknown or revoked key: all alike). A plain
    function: FastAPI runs it in its thread pool, off the event loop."""
    if not authorization:
        raise Unauthorized("an API key is needed: send `Authorization: Bearer <key>`")
    scheme, _, key = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("send the API key as `Authorization: Bearer <key>`")
    with made.client.reader() as session:
        found = authenticate(session, key.strip())
    if found is None:
        raise Unauthorized("the API key is not valid (unknown, malformed or revoked)")
    return found


Caller = Annotated[Principal, Depends(principal)]
