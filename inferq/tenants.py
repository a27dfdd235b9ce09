"""Tenants: who owns jobs behind the HTTP API, and the secret that signs their webhooks.

A tenant row is made the first time something needs it (its first key, a webhook of a job of the default tenant),
never at import; `ensure_tenant` is safe when two processes make the same tenant at once.
"""

from __future__ import annotations

import base64
import secrets

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from inferq.schema import Tenant, utcnow

#: Bytes of a webhook signing key: 256 bits, as HMAC-SHA256 wants (the Standard Webhooks spec allows 24 to 64).
WEBHOOK_SECRET_BYTES = 32


def new_webhook_secret() -> str:
    """A Standard Webhooks signing secret: ``whsec_`` + base64 of fresh random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(WEBHOOK_SECRET_BYTES)).decode("ascii")


def ensure_tenant(session: Session, name: str) -> Tenant:
    """The tenant called ``name``, made (with a fresh webhook secret and no quota) if it does not exist yet.

    Flushed in the caller's transaction. Two transactions making the same tenant at once both succeed and read
    the same row: the insert skips a row that another transaction wrote first."""
    tenant = session.get(Tenant, name)
    if tenant is not None:
        return tenant
    values = {"name": name, "webhook_secret": new_webhook_secret(), "created_at": utcnow()}
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        session.execute(pg_insert(Tenant).values(values).on_conflict_do_nothing(index_elements=["name"]))
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        session.execute(sqlite_insert(Tenant).values(values).on_conflict_do_nothing(index_elements=["name"]))
    else:
        session.execute(insert(Tenant).values(values))
    return session.scalars(select(Tenant).where(Tenant.name == name).execution_options(populate_existing=True)).one()
