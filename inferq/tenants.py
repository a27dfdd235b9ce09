"""Tenants: who owns jobs behind the HTTP API, and the secret that signs their webhooks.

A tenant row is made the first time something needs it (its first key, a webhook of a job of the default tenant),
never at import; `ensure_tenant` is safe when two processes make the same tenant at once.
"""

from __future__ import annotations

import base64
import secrets

from sqlalchemy.orm import Session

from inferq.errors import InvalidParameter
from inferq.schema import Tenant
from inferq.store import auth
from inferq.store.dispatch import wake_dispatcher

#: Bytes of a webhook signing key: 256 bits, as HMAC-SHA256 wants (the Standard Webhooks spec allows 24 to 64).
WEBHOOK_SECRET_BYTES = 32


def new_webhook_secret() -> str:
    """A Standard Webhooks signing secret: ``whsec_`` + base64 of fresh random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(WEBHOOK_SECRET_BYTES)).decode("ascii")


def ensure_tenant(session: Session, name: str) -> Tenant:
    """The tenant called ``name``, made (with a fresh webhook secret and no quota) if it does not exist yet.

    Flushed in the caller's transaction. Two transactions making the same tenant at once both succeed and read
    the same row: the insert skips a row that another transaction wrote first."""
    found = auth.tenant(session, name)
    if found is not None:
        return found
    return auth.add_tenant(session, name, new_webhook_secret())


def set_share(
    session: Session,
    name: str,
    *,
    weight: int | None = None,
    max_chunks_in_flight: int | None = None,
    uncapped: bool = False,
) -> Tenant:
    """Set the tenant's share of the workers (`inferq.dispatcher`): its ``weight`` (1 or more) and its cap on chunks
    in flight (``max_chunks_in_flight``, 1 or more; ``uncapped`` removes it); what is not given stays. The tenant
    is made if it does not exist. Flushed in the caller's transaction, which wakes the dispatcher's leader when it
    commits (a cap raised lets more of the tenant's chunks go at once)."""
    if weight is not None and weight < 1:
        raise InvalidParameter("weight must be 1 or more", field="weight")
    if max_chunks_in_flight is not None and max_chunks_in_flight < 1:
        raise InvalidParameter("max_chunks_in_flight must be 1 or more", field="max_chunks_in_flight")
    row = ensure_tenant(session, name)
    if weight is not None:
        row.weight = weight
    if uncapped:
        row.max_chunks_in_flight = None
    elif max_chunks_in_flight is not None:
        row.max_chunks_in_flight = max_chunks_in_flight
    session.flush()
    wake_dispatcher(session)
    return row
