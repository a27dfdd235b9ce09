"""``GET /v1/webhook-secret`` and ``POST /v1/webhook-secret/rotate``: a key reads and rotates its own tenant's
webhook signing secret, never another's, and the secret stays out of every log line and every cache."""

from __future__ import annotations

import datetime as dt
import logging

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from inferq.store.secrets import signing_secrets
from tests.server.conftest import MakeKey, bearer

pytestmark = pytest.mark.services


def test_a_key_reads_its_own_tenants_secret_and_no_other(
    api: TestClient, make_key: MakeKey, sessions: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # Given two tenants, one key each
    key_a, tenant_a = make_key()
    key_b, tenant_b = make_key()

    # When each reads the webhook secret
    a = api.get("/v1/webhook-secret", headers=bearer(key_a))
    b = api.get("/v1/webhook-secret", headers=bearer(key_b))

    # Then each gets its own tenant's, the one that signs its webhooks, never cached
    assert a.status_code == b.status_code == 200
    assert a.headers["cache-control"] == "no-store"
    with sessions() as session:
        assert signing_secrets(session, tenant_a) == (a.json()["secret"],)
        assert signing_secrets(session, tenant_b) == (b.json()["secret"],)
    assert (a.json()["tenant"], b.json()["tenant"]) == (tenant_a, tenant_b)
    assert a.json()["secret"] != b.json()["secret"] and a.json()["previous_expires_at"] is None
    # And without a key nothing is read
    assert api.get("/v1/webhook-secret").status_code == 401
    # And the secrets are in no log line
    assert a.json()["secret"] not in caplog.text and b.json()["secret"] not in caplog.text


def test_a_rotation_keeps_the_old_secret_signing_for_the_overlap_and_touches_no_other_tenant(
    api: TestClient, make_key: MakeKey, sessions: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    key_a, tenant_a = make_key()
    key_b, tenant_b = make_key()
    old_a = api.get("/v1/webhook-secret", headers=bearer(key_a)).json()["secret"]
    old_b = api.get("/v1/webhook-secret", headers=bearer(key_b)).json()["secret"]

    # When tenant A rotates its secret with a 10-minute overlap
    rotated = api.post("/v1/webhook-secret/rotate?overlap_seconds=600", headers=bearer(key_a))

    # Then A has a new secret, shown now and readable again, and the old one signs beside it until the overlap ends
    assert rotated.status_code == 200, rotated.text
    new_a = rotated.json()["secret"]
    assert new_a != old_a and rotated.headers["cache-control"] == "no-store"
    expires = dt.datetime.fromisoformat(rotated.json()["previous_expires_at"])
    assert 590 < (expires - dt.datetime.now(dt.UTC)).total_seconds() <= 600
    assert api.get("/v1/webhook-secret", headers=bearer(key_a)).json()["secret"] == new_a
    with sessions() as session:
        assert signing_secrets(session, tenant_a) == (new_a, old_a)
        assert signing_secrets(session, tenant_a, expires + dt.timedelta(seconds=1)) == (new_a,)
        # And tenant B's secret is untouched
        assert signing_secrets(session, tenant_b) == (old_b,)
    # And an overlap out of range is refused
    assert api.post("/v1/webhook-secret/rotate?overlap_seconds=-1", headers=bearer(key_a)).status_code == 422
    assert new_a not in caplog.text and old_a not in caplog.text
