"""A status poll (``GET /v1/jobs/{id}``): the key check and the job's read are one statement on the polls' own engine
(`server.auth.job_for_key`), so these hold the same guarantees as every other route's key check, plus the retry
that stands in for the ping the polls' engine does not send."""

from __future__ import annotations

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from inferq.db import make_engine, make_sessionmaker
from inferq.keys import create_key, revoke_key
from inferq.settings import Settings
from server.app import create_app
from tests.server.conftest import MakeKey, StoreJob, bearer

pytestmark = pytest.mark.services


def test_a_poll_sees_its_tenants_job_and_an_admin_sees_every_one(
    api: TestClient, make_key: MakeKey, stored_job: StoreJob
) -> None:
    key, tenant = make_key()
    other, _ = make_key()
    admin, _ = make_key(admin=True)
    job_id = stored_job(tenant)
    own = api.get(f"/v1/jobs/{job_id}", headers=bearer(key))
    assert own.status_code == 200
    assert own.json()["id"] == job_id and own.json()["tenant"] == tenant
    assert api.get(f"/v1/jobs/{job_id}", headers=bearer(admin)).json() == own.json()
    hidden = api.get(f"/v1/jobs/{job_id}", headers=bearer(other))
    assert hidden.status_code == 404 and hidden.json()["error"]["code"] == "job_not_found"


@pytest.mark.parametrize("spoil", ["wrong secret", "unknown id", "malformed", "no scheme"])
def test_a_poll_with_a_key_that_is_not_valid_is_401_whether_the_job_exists_or_not(
    api: TestClient, make_key: MakeKey, stored_job: StoreJob, spoil: str
) -> None:
    key, tenant = make_key()
    job_id = stored_job(tenant)
    spoilt = {
        "wrong secret": f"Bearer {key[:-4]}{'AAAA' if not key.endswith('AAAA') else 'BBBB'}",
        "unknown id": f"Bearer iq_{'0' * 16}_{key.split('_', 2)[2]}",
        "malformed": "Bearer iq_nothing",
        "no scheme": key,
    }[spoil]
    for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{'0' * 32}"):
        refused = api.get(path, headers={"Authorization": spoilt})
        assert refused.status_code == 401, path
        assert refused.json()["error"]["code"] == "unauthorized"


def test_a_revoked_key_polls_no_more_from_the_next_request_on(
    api: TestClient, make_key: MakeKey, stored_job: StoreJob, sessions: sessionmaker[Session]
) -> None:
    key, tenant = make_key()
    job_id = stored_job(tenant)
    assert api.get(f"/v1/jobs/{job_id}", headers=bearer(key)).status_code == 200
    with sessions.begin() as session:
        assert revoke_key(session, key.split("_")[1])
    assert api.get(f"/v1/jobs/{job_id}", headers=bearer(key)).status_code == 401


def test_a_poll_outlives_the_database_dropping_its_connections(own_postgres: str, api_settings: Settings) -> None:
    settings = api_settings.model_copy(update={"database_url": own_postgres})
    engine = make_engine(settings)
    try:
        with make_sessionmaker(engine).begin() as session:
            key, _ = create_key(session, "t-dropped")
        with TestClient(create_app(settings)) as api:
            assert api.get(f"/v1/jobs/{'0' * 32}", headers=bearer(key)).status_code == 404
            # Every other session of the database ends, the polls' pooled connection among them (as a restart
            # would): the next poll's statement fails on it, and its one retry runs on a fresh connection.
            url = make_url(own_postgres).set(drivername="postgresql").render_as_string(hide_password=False)
            with psycopg.connect(url) as admin:
                ended = admin.execute(
                    "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()) AS t"
                ).fetchone()
            assert ended is not None and ended[0] >= 1
            again = api.get(f"/v1/jobs/{'0' * 32}", headers=bearer(key))
            assert again.status_code == 404, again.text
            assert again.json()["error"]["code"] == "job_not_found"
    finally:
        engine.dispose()
