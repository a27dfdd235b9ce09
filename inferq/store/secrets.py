"""A tenant's webhook signing secrets: the one that signs, the one a rotation replaced while its overlap lasts, and
the rotation itself.

Rotation (Standard Webhooks): the new secret signs from now on, and the previous one signs beside it (two ``v1,``
signatures in ``webhook-signature``) until ``previous_secret_expires_at``, so that a receiver can switch to the new
secret at any time during the overlap without refusing a request. After it, only the new one signs. A second
rotation during an overlap keeps only the secret it replaces as the previous one.

The caller owns the session and its transaction; these functions flush and never commit.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from inferq.schema import Tenant, as_utc, utcnow
from inferq.tenants import ensure_tenant, new_webhook_secret


@dataclass(frozen=True)
class WebhookSecret:
    """A tenant's signing secret as its own key reads it (never the previous one)."""

    tenant: str
    #: The secret that signs every webhook (``whsec_…``).
    secret: str
    #: Until when the secret a rotation replaced still signs too; ``None``: no rotation's overlap is running.
    previous_expires_at: dt.datetime | None


def tenant_exists(session: Session, tenant: str) -> bool:
    """Whether ``tenant`` has its row already (a key's creation makes it, and shows its secret, only the first
    time)."""
    return session.scalar(select(Tenant.name).where(Tenant.name == tenant)) is not None


def signing_secrets(session: Session, tenant: str, now: dt.datetime | None = None) -> tuple[str, ...]:
    """The secrets that sign ``tenant``'s webhooks at ``now``: its current one, then the previous one while a
    rotation's overlap lasts. The tenant is made (with a fresh secret) if it has no row yet."""
    row = ensure_tenant(session, tenant)
    if _overlapping(row, now or utcnow()):
        assert row.previous_webhook_secret is not None
        return (row.webhook_secret, row.previous_webhook_secret)
    return (row.webhook_secret,)


def read_webhook_secret(session: Session, tenant: str) -> WebhookSecret:
    """``tenant``'s current signing secret and when its previous one stops signing."""
    row = ensure_tenant(session, tenant)
    return _shown(row, utcnow())


def rotate_webhook_secret(
    session: Session, tenant: str, overlap_seconds: float, now: dt.datetime | None = None
) -> WebhookSecret:
    """Give ``tenant`` a fresh signing secret; the one it replaces signs too for ``overlap_seconds`` more (``0``:
    not at all). The tenant's row is locked first, so that two rotations at once make one after the other."""
    ensure_tenant(session, tenant)
    row = session.scalars(
        select(Tenant).where(Tenant.name == tenant).with_for_update().execution_options(populate_existing=True)
    ).one()
    at = now or utcnow()
    if overlap_seconds > 0:
        row.previous_webhook_secret = row.webhook_secret
        row.previous_secret_expires_at = at + dt.timedelta(seconds=overlap_seconds)
    else:
        row.previous_webhook_secret = row.previous_secret_expires_at = None
    row.webhook_secret = new_webhook_secret()
    session.flush()
    return _shown(row, at)


def _overlapping(row: Tenant, now: dt.datetime) -> bool:
    expires = row.previous_secret_expires_at
    return row.previous_webhook_secret is not None and expires is not None and as_utc(expires) > now


def _shown(row: Tenant, now: dt.datetime) -> WebhookSecret:
    expires = row.previous_secret_expires_at
    return WebhookSecret(
        row.name, row.webhook_secret, as_utc(expires) if expires is not None and _overlapping(row, now) else None
    )
