"""A tenant is made once, whoever asks first, and keeps its webhook secret."""

from __future__ import annotations

import base64
import threading

import pytest
from sqlalchemy import func, select

from inferq.db import make_engine, make_sessionmaker
from inferq.schema import Tenant
from inferq.settings import Settings
from inferq.tenants import WEBHOOK_SECRET_BYTES, ensure_tenant


def test_a_new_tenant_gets_a_standard_webhooks_secret_and_keeps_it(sqlite_settings: Settings) -> None:
    sessions = make_sessionmaker(make_engine(sqlite_settings))
    with sessions.begin() as session:
        secret = ensure_tenant(session, "acme").webhook_secret
    with sessions.begin() as session:
        again = ensure_tenant(session, "acme")
        other = ensure_tenant(session, "globex")

    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == WEBHOOK_SECRET_BYTES
    assert again.webhook_secret == secret
    assert other.webhook_secret != secret


@pytest.mark.services
def test_tenants_made_at_once_on_postgresql_end_as_one_row(migrated_postgres: str) -> None:
    sessions = make_sessionmaker(make_engine(Settings(database_url=migrated_postgres)))
    barrier = threading.Barrier(4)
    secrets: list[str] = []

    def make() -> None:
        with sessions.begin() as session:
            barrier.wait()
            secrets.append(ensure_tenant(session, "race").webhook_secret)

    threads = [threading.Thread(target=make) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    with sessions() as session:
        rows = session.scalar(select(func.count()).select_from(Tenant).where(Tenant.name == "race"))
        stored = session.scalars(select(Tenant.webhook_secret).where(Tenant.name == "race")).one()
    assert rows == 1
    assert secrets == [stored] * 4
