"""The statements on API keys and tenants: a key's row made, listed, revoked and found by its id; a tenant found, or
made once even when two transactions make it at the same time.

Hashing, key formats and the comparison of secrets stay in `inferq.keys`; this module only reads and writes rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Row, and_, bindparam, or_, select, update
from sqlalchemy.orm import Session

from inferq.schema import ApiKey, Job, Tenant, utcnow
from inferq.store.dialect import Dialect, dialect_of

# -- tenants -----------------------------------------------------------------------------------------------------------


def tenant(session: Session, name: str) -> Tenant | None:
    """The tenant called ``name``, if it exists."""
    return session.get(Tenant, name)


def add_tenant(session: Session, name: str, webhook_secret: str) -> Tenant:
    """Insert the tenant ``name`` (no quota) unless a row of that name exists (written first by another
    transaction: then that row, unchanged), and return the row as stored."""
    values = {"name": name, "webhook_secret": webhook_secret, "created_at": utcnow()}
    if dialect_of(session) is Dialect.POSTGRESQL:
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        session.execute(pg_insert(Tenant).values(values).on_conflict_do_nothing(index_elements=["name"]))
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        session.execute(sqlite_insert(Tenant).values(values).on_conflict_do_nothing(index_elements=["name"]))
    return session.scalars(select(Tenant).where(Tenant.name == name).execution_options(populate_existing=True)).one()


# -- keys --------------------------------------------------------------------------------------------------------------


def add_key(session: Session, key_id: str, tenant: str, key_hash: str, *, admin: bool) -> ApiKey:
    """Insert a key's row (made now), flushed."""
    row = ApiKey(id=key_id, tenant=tenant, key_hash=key_hash, admin=admin, created_at=utcnow())
    session.add(row)
    session.flush()
    return row


def keys(session: Session, tenant: str | None = None) -> Sequence[ApiKey]:
    """Every key's row (or ``tenant``'s), oldest first."""
    query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if tenant is not None:
        query = query.where(ApiKey.tenant == tenant)
    return session.scalars(query).all()


def key(session: Session, key_id: str) -> ApiKey | None:
    """The key row ``key_id`` as stored now (never a copy an earlier read of the session left), if any."""
    return session.get(ApiKey, key_id, populate_existing=True)


def revoke_key(session: Session, key_id: str) -> bool:
    """Revoke the key ``key_id`` now, unless it is revoked already (its first revocation time stays). False when
    there is no such key."""
    if session.get(ApiKey, key_id) is None:
        return False
    session.execute(update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None)).values(revoked_at=utcnow()))
    return True


#: A status poll's one statement, built once: the key (``key_hash``, ``revoked_at``, ``admin``, ``key_tenant``)
#: and, on the same row, the job's columns under their attribute names (``meta``, not the column's ``metadata``)
#: when the key may see the job (its own tenant's, or any for an admin key; every column ``None`` otherwise).
_KEY_AND_JOB = (
    select(
        ApiKey.key_hash,
        ApiKey.revoked_at,
        ApiKey.admin,
        ApiKey.tenant.label("key_tenant"),
        *(column.label(name) for name, column in Job.__mapper__.columns.items()),
    )
    .select_from(ApiKey)
    .outerjoin(Job, and_(Job.id == bindparam("job_id"), or_(ApiKey.admin, Job.tenant == ApiKey.tenant)))
    .where(ApiKey.id == bindparam("key_id"))
)


def key_and_job(conn: Connection, key_id: str, job_id: str) -> Row[Any] | None:
    """The key ``key_id`` and the job ``job_id`` as that key may see it, on one row (`_KEY_AND_JOB`): the key check
    and the job's read of a status poll in one round trip. ``None`` when there is no such key."""
    return conn.execute(_KEY_AND_JOB, {"key_id": key_id, "job_id": job_id}).first()
