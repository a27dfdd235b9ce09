"""A tenant's webhook signing secret: shown once when the tenant is made (``inferq keys create``), rotated with an
overlap during which both secrets sign (two ``v1,`` signatures, as Standard Webhooks describes) and after which only
the new one does, and never written to a log. On SQLite, with a real HTTP receiver on a loopback port."""

from __future__ import annotations

import datetime as dt
import logging
import os
import subprocess
import sys
import uuid

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from inferq.db import make_engine, make_sessionmaker
from inferq.errors import InvalidSignature
from inferq.keys import create_key
from inferq.schema import Job, Tenant, utcnow
from inferq.settings import Settings
from inferq.store.secrets import read_webhook_secret, rotate_webhook_secret, signing_secrets
from inferq.task_specs import TaskName
from inferq.webhooks import Sent, deliver, signature_headers, verify
from producer.client import JobOptions, store_job
from producer.inputs import InputRecord
from tests.support.webhook_receiver import Receiver
from worker.claims import finish_jobs_if_complete


@pytest.fixture
def sessions(sqlite_settings: Settings) -> sessionmaker[Session]:
    return make_sessionmaker(make_engine(sqlite_settings))


def ended_job_delivery(sessions: sessionmaker[Session], tenant: str, url: str) -> str:
    """A job of ``tenant`` with a webhook to ``url``, ended: its delivery's id."""
    job_id = uuid.uuid4().hex
    records = [InputRecord(line=1, client_id=None, data={"text": "t"})]
    with sessions.begin() as session:
        store_job(
            session,
            job_id,
            TaskName.CLASSIFICATION,
            "m",
            {},
            records,
            10,
            "q",
            options=JobOptions(tenant=tenant, webhook_url=url),
        )
    with sessions.begin() as session:
        session.execute(update(Job).where(Job.id == job_id).values(succeeded=1, failed=0))
        [delivery_id] = finish_jobs_if_complete(session, [job_id], utcnow())
    return delivery_id


def test_a_rotation_signs_with_both_secrets_until_the_overlap_ends(sessions: sessionmaker[Session]) -> None:
    # Given a tenant and its secret
    now = utcnow()
    with sessions.begin() as session:
        old = read_webhook_secret(session, "acme").secret
        # When it is rotated with an hour's overlap
        rotated = rotate_webhook_secret(session, "acme", 3600, now=now)
    new = rotated.secret
    assert new != old and new.startswith("whsec_")
    assert rotated.previous_expires_at == now + dt.timedelta(hours=1)

    # Then during the overlap both sign: a receiver holding either secret verifies the request
    with sessions() as session:
        during = signing_secrets(session, "acme", now + dt.timedelta(minutes=59))
        after = signing_secrets(session, "acme", now + dt.timedelta(minutes=61))
    assert during == (new, old)
    headers = signature_headers(during, "msg_1", b"{}", 1_700_000_000)
    assert len(headers["webhook-signature"].split()) == 2
    assert all(sig.startswith("v1,") for sig in headers["webhook-signature"].split())
    verify(old, headers, b"{}", now=1_700_000_000)
    verify(new, headers, b"{}", now=1_700_000_000)
    # And after it only the new one signs: the old secret no longer verifies
    assert after == (new,)
    headers = signature_headers(after, "msg_1", b"{}", 1_700_000_000)
    verify(new, headers, b"{}", now=1_700_000_000)
    with pytest.raises(InvalidSignature):
        verify(old, headers, b"{}", now=1_700_000_000)


def test_a_rotation_without_overlap_signs_with_the_new_secret_only(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        old = read_webhook_secret(session, "acme").secret
        rotated = rotate_webhook_secret(session, "acme", 0)
    with sessions() as session:
        assert signing_secrets(session, "acme") == (rotated.secret,)
    assert rotated.previous_expires_at is None and rotated.secret != old


def test_a_delivery_during_the_overlap_carries_both_signatures(
    sqlite_settings: Settings, sessions: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    settings = sqlite_settings.model_copy(update={"webhook_allow_private": True, "webhook_timeout": 5.0})
    caplog.set_level(logging.DEBUG)
    with Receiver() as receiver:
        delivery_id = ended_job_delivery(sessions, "acme", receiver.url)
        with sessions.begin() as session:
            old = read_webhook_secret(session, "acme").secret
            new = rotate_webhook_secret(session, "acme", 3600).secret
        # When the delivery is sent during the overlap
        assert deliver(settings, sessions, delivery_id).outcome is Sent.DELIVERED
        # And another after the overlap has ended
        with sessions.begin() as session:
            session.execute(update(Tenant).where(Tenant.name == "acme").values(previous_secret_expires_at=utcnow()))
        later = ended_job_delivery(sessions, "acme", receiver.url)
        assert deliver(settings, sessions, later).outcome is Sent.DELIVERED
    first, second = receiver.received
    # Then the first carried two v1 signatures, each verifying with one of the secrets
    assert len(first.headers["webhook-signature"].split()) == 2
    verify(old, first.headers, first.body)
    verify(new, first.headers, first.body)
    # And the second only the new secret's
    assert len(second.headers["webhook-signature"].split()) == 1
    verify(new, second.headers, second.body)
    with pytest.raises(InvalidSignature):
        verify(old, second.headers, second.body)
    # And no log line holds either secret
    assert caplog.records
    assert old not in caplog.text and new not in caplog.text


def test_keys_create_shows_a_new_tenants_secret_once_and_rotate_replaces_it(sqlite_settings: Settings) -> None:
    env = {**os.environ, "INFERQ_DATABASE_URL": sqlite_settings.database_url, "INFERQ_LOG_LEVEL": "DEBUG"}

    def inferq(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "inferq.cli", "keys", *args], env=env, capture_output=True, text=True, check=False
        )

    engine = make_engine(sqlite_settings)
    sessions = make_sessionmaker(engine)
    # When a tenant's first key is made
    first = inferq("create", "--tenant", "acme")
    with sessions() as session:
        secret = read_webhook_secret(session, "acme").secret
    # Then the key alone is on stdout, and the tenant's secret is shown beside the message
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip().startswith("iq_") and len(first.stdout.split()) == 1
    assert secret in first.stderr and secret not in first.stdout
    # And a second key of the same tenant does not show it again
    second = inferq("create", "--tenant", "acme")
    assert second.returncode == 0 and secret not in second.stdout + second.stderr

    # When the secret is rotated with a minute's overlap
    rotated = inferq("rotate-webhook-secret", "--tenant", "acme", "--overlap", "60")
    assert rotated.returncode == 0, rotated.stderr
    new = rotated.stdout.strip()
    with sessions() as session:
        assert signing_secrets(session, "acme") == (new, secret)
    # And a tenant that does not exist is refused
    assert inferq("rotate-webhook-secret", "--tenant", "nobody").returncode == 2
    engine.dispose()


def test_a_tenant_made_by_a_key_has_a_secret_of_its_own(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        create_key(session, "one")
        create_key(session, "two")
        assert read_webhook_secret(session, "one").secret != read_webhook_secret(session, "two").secret
