"""API keys: shown once, stored as a SHA-256 only, found by id and compared in constant time, refused once
revoked; ``inferq keys`` creates, lists and revokes them without ever printing a stored key."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

from sqlalchemy import select

from inferq.db import make_engine, make_sessionmaker
from inferq.keys import authenticate, create_key, list_keys, revoke_key
from inferq.schema import ApiKey, Tenant
from inferq.settings import Settings


def test_a_key_is_stored_as_its_hash_and_authenticates_until_revoked(sqlite_settings: Settings) -> None:
    sessions = make_sessionmaker(make_engine(sqlite_settings))
    # Given a key made for a new tenant with a quota
    with sessions.begin() as session:
        key, info = create_key(session, "acme", max_queued_items=10)
    key_id = key.split("_")[1]

    # Then it reads iq_<id>_<secret> with 256 random bits, and only its SHA-256 is stored
    assert key.startswith(f"iq_{info.id}_") and key_id == info.id
    with sessions() as session:
        row = session.scalars(select(ApiKey)).one()
        assert row.key_hash == hashlib.sha256(key.encode()).hexdigest()
        assert key.split("_", 2)[2] not in (row.key_hash, row.id)
        assert session.get(Tenant, "acme").max_queued_items == 10  # type: ignore[union-attr]
        # And it authenticates as its tenant; anything else does not
        principal = authenticate(session, key)
        assert principal is not None and (principal.tenant, principal.admin, principal.scope()) == (
            "acme",
            False,
            "acme",
        )
        assert authenticate(session, key[:-1] + ("A" if key[-1] != "A" else "B")) is None
        assert authenticate(session, f"iq_{'f' * 16}_{key.split('_', 2)[2]}") is None
        assert authenticate(session, "not a key") is None

    # When it is revoked, it no longer authenticates
    with sessions.begin() as session:
        assert revoke_key(session, key_id)
        assert not revoke_key(session, "0" * 16)
    with sessions() as session:
        assert authenticate(session, key) is None
        assert [k.revoked_at is not None for k in list_keys(session)] == [True]


def test_an_admin_key_sees_every_tenant(sqlite_settings: Settings) -> None:
    sessions = make_sessionmaker(make_engine(sqlite_settings))
    with sessions.begin() as session:
        key, _ = create_key(session, "ops", admin=True)
    with sessions() as session:
        principal = authenticate(session, key)
    assert principal is not None and principal.admin and principal.scope() is None


def test_the_keys_commands_create_list_and_revoke(sqlite_settings: Settings) -> None:
    env = {**os.environ, "INFERQ_DATABASE_URL": sqlite_settings.database_url}

    def inferq(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "inferq.cli", "keys", *args], env=env, capture_output=True, text=True, check=False
        )

    made = inferq("create", "--tenant", "acme", "--admin", "--max-queued-items", "5")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    key_id = key.split("_")[1]
    listed = inferq("list", "--json")
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["id"], r["tenant"], r["admin"], r["revoked_at"]) for r in rows] == [(key_id, "acme", True, None)]
    assert key.split("_", 2)[2] not in listed.stdout + inferq("list").stdout
    assert inferq("revoke", key_id).returncode == 0
    assert json.loads(inferq("list", "--json").stdout)["revoked_at"] is not None
    assert inferq("revoke", "0" * 16).returncode == 2
    assert inferq("create", "--tenant", "bad name!").returncode == 2


def test_the_tenant_command_sets_and_shows_weight_and_cap(sqlite_settings: Settings) -> None:
    env = {**os.environ, "INFERQ_DATABASE_URL": sqlite_settings.database_url}

    def inferq(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "inferq.cli", "keys", "tenant", *args],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )

    # A new tenant starts at weight 1, uncapped; what is given is set, what is not stays
    assert json.loads(inferq("acme", "--json").stdout) == {
        "tenant": "acme",
        "weight": 1,
        "max_chunks_in_flight": None,
        "max_queued_items": None,
    }
    assert json.loads(inferq("acme", "--weight", "3", "--max-chunks-in-flight", "4", "--json").stdout)["weight"] == 3
    shown = inferq("acme")
    assert shown.returncode == 0 and "weight 3, chunks in flight 4" in shown.stdout
    assert json.loads(inferq("acme", "--no-cap", "--json").stdout)["max_chunks_in_flight"] is None
    # And a weight under 1 is refused
    assert inferq("acme", "--weight", "0").returncode == 2
