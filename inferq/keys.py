"""API keys: made, listed, revoked (``inferq keys``) and checked on every request of the HTTP API.

A key reads ``iq_<id>_<secret>``: ``id`` is the row's public name (16 hex characters), ``secret`` 256 random bits
(URL-safe base64). Only the SHA-256 (hex) of the whole key is stored; the key itself is shown once, when it is made.
A request's key is found by its id (one primary-key read), then its hash compared in constant time
(`hmac.compare_digest`). Nothing is cached between requests, so a revoked key is refused from the next request on.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Protocol, TypeVar

from sqlalchemy.orm import Session

from inferq import constants
from inferq.errors import InvalidParameter
from inferq.schema import ApiKey, as_utc
from inferq.store import auth
from inferq.tenants import ensure_tenant

#: The prefix every key starts with, so that a key pasted somewhere it should not be is easy to spot.
KEY_PREFIX = "iq_"

#: A tenant's name: what `Job.tenant` and `Tenant.name` hold (64 characters), in letters, digits, ``.-_``.
_TENANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_KEY = re.compile(r"iq_([0-9a-f]{16})_([A-Za-z0-9_-]{20,100})")


@dataclass(frozen=True)
class Principal:
    """Who a request comes from: its key's id, tenant, and whether the key is an admin key."""

    key_id: str
    tenant: str
    admin: bool

    def scope(self) -> str | None:
        """The tenant whose jobs the key may see; ``None``: every tenant's (an admin key)."""
        return None if self.admin else self.tenant


@dataclass(frozen=True)
class KeyInfo:
    """A key as ``inferq keys list`` shows it: never the key, nor its hash."""

    id: str
    tenant: str
    admin: bool
    created_at: dt.datetime
    revoked_at: dt.datetime | None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def check_tenant_name(name: str) -> str:
    if not _TENANT_NAME.fullmatch(name):
        raise InvalidParameter(
            "a tenant name is 1 to 64 letters, digits, '.', '-' or '_', starting with a letter or digit",
            field="tenant",
        )
    return name


def create_key(
    session: Session, tenant: str, *, admin: bool = False, max_queued_items: int | None = None
) -> tuple[str, KeyInfo]:
    """A new key for ``tenant`` (made if new; its quota set to ``max_queued_items`` when given): the key, to be
    shown once, and its row as `KeyInfo`. Flushed in the caller's transaction."""
    check_tenant_name(tenant)
    if max_queued_items is not None and max_queued_items < 0:
        raise InvalidParameter("max_queued_items must be 0 or more", field="max_queued_items")
    row = ensure_tenant(session, tenant)
    if max_queued_items is not None:
        row.max_queued_items = max_queued_items
    key_id = secrets.token_hex(8)
    key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(constants.API_KEY_SECRET_BYTES)}"
    return key, _info(auth.add_key(session, key_id, tenant, hash_key(key), admin=admin))


def list_keys(session: Session, tenant: str | None = None) -> list[KeyInfo]:
    """Every key (or ``tenant``'s), oldest first."""
    return [_info(k) for k in auth.keys(session, tenant)]


def revoke_key(session: Session, key_id: str) -> bool:
    """Revoke the key ``key_id``: refused from the next request on. False when there is no such key; revoking a
    revoked key keeps its first revocation time."""
    return auth.revoke_key(session, key_id)


def authenticate(session: Session, key: str) -> Principal | None:
    """The principal of a valid, unrevoked ``key``; ``None`` for anything else (malformed, unknown, wrong secret,
    revoked), all alike."""
    key_id = key_id_of(key)
    if key_id is None:
        return None
    row = checked_key(key, auth.key(session, key_id))
    if row is None:
        return None
    return Principal(key_id=row.id, tenant=row.tenant, admin=row.admin)


def key_id_of(key: str) -> str | None:
    """The id part of a well-formed key (``iq_<id>_<secret>``), the one its row is found by; ``None`` when malformed."""
    match = _KEY.fullmatch(key)
    return match.group(1) if match is not None else None


class StoredKey(Protocol):
    """What a key check reads of a key's row: the ORM row, or a status poll's Core row."""

    key_hash: str
    revoked_at: dt.datetime | None


_Row = TypeVar("_Row", bound=StoredKey)


def checked_key(key: str, row: _Row | None) -> _Row | None:
    """``row`` when it is the row of ``key`` (its hash) and the key is not revoked; ``None`` otherwise, and for no
    row. The hash is compared even without a row, so that an unknown id takes as long as a wrong secret."""
    stored = row.key_hash if row is not None else "0" * 64
    if not hmac.compare_digest(stored, hash_key(key)) or row is None or row.revoked_at is not None:
        return None
    return row


def _info(row: ApiKey) -> KeyInfo:
    return KeyInfo(
        id=row.id,
        tenant=row.tenant,
        admin=bool(row.admin),
        created_at=as_utc(row.created_at),
        revoked_at=as_utc(row.revoked_at),
    )
