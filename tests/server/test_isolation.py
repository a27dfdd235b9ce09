"""Tenant isolation as a property: whatever the tenants, keys and jobs, no request ever sees, lists, cancels,
retries or reads the results, errors or webhooks of another tenant's job; it gets exactly what an unknown id gets.
An admin key sees every tenant's jobs."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inferq.states import JobState
from tests.server.conftest import MakeKey, StoreJob, bearer

pytestmark = pytest.mark.services

#: Each tenant: how many jobs it holds, and whether their items failed (so that a retry would have work).
tenants = st.lists(st.tuples(st.integers(0, 2), st.booleans()), min_size=2, max_size=3)

#: Every request a key can make about one job.
PER_JOB = [
    ("GET", ""),
    ("GET", "/results"),
    ("GET", "/errors"),
    ("GET", "/webhooks"),
    ("POST", "/cancel"),
    ("POST", "/retry"),
]


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layout=tenants, admin_sees=st.booleans())
def test_no_key_reaches_another_tenants_job(
    api: TestClient, make_key: MakeKey, stored_job: StoreJob, layout: list[tuple[int, bool]], admin_sees: bool
) -> None:
    # Given fresh tenants, one key each, and their jobs (finished with failed items where drawn so)
    owners: dict[str, str] = {}
    keys: dict[str, str] = {}
    for n_jobs, with_failures in layout:
        key, tenant = make_key()
        keys[tenant] = key
        for _ in range(n_jobs):
            job_id = stored_job(
                tenant, n=2, failed=(0,) if with_failures else (), state=JobState.SUCCEEDED if with_failures else None
            )
            owners[job_id] = tenant
    unknown = uuid.uuid4().hex

    for tenant, key in keys.items():
        nobodys = {(m, x): api.request(m, f"/v1/jobs/{unknown}{x}", headers=bearer(key)) for m, x in PER_JOB}
        # When each key lists its jobs
        listed = api.get("/v1/jobs?limit=100", headers=bearer(key)).json()["data"]
        # Then it lists exactly its own
        assert {j["id"] for j in listed} == {j for j, t in owners.items() if t == tenant}
        assert all(j["tenant"] == tenant for j in listed)

        for job_id, owner in owners.items():
            if owner == tenant:
                assert api.get(f"/v1/jobs/{job_id}", headers=bearer(key)).status_code == 200
                assert api.get(f"/v1/jobs/{job_id}/results", headers=bearer(key)).status_code == 200
                continue
            # And every request about another tenant's job gets what a request about an unknown id gets
            for method, suffix in PER_JOB:
                theirs = api.request(method, f"/v1/jobs/{job_id}{suffix}", headers=bearer(key))
                nobody = nobodys[method, suffix]
                assert theirs.status_code == nobody.status_code == 404, (method, suffix, theirs.text)
                assert theirs.json()["error"]["code"] == nobody.json()["error"]["code"] == "job_not_found"
                assert theirs.json()["error"]["message"].replace(job_id, unknown) == nobody.json()["error"]["message"]
            # And listing after another tenant's job is refused as after an unknown one
            assert api.get(f"/v1/jobs?after={job_id}", headers=bearer(key)).status_code == 422

    # And nothing any other key sent changed a job: none was cancelled, none retried
    admin_key, _ = make_key(admin=True)
    for job_id, owner in owners.items():
        job = api.get(f"/v1/jobs/{job_id}", headers=bearer(admin_key)).json()
        assert job["tenant"] == owner and job["state"] in ("queued", "succeeded")
    if admin_sees and owners:
        listed = api.get("/v1/jobs?limit=100", headers=bearer(admin_key)).json()["data"]
        assert {j["id"] for j in listed} >= set(owners)
    retried = [
        j for j in api.get("/v1/jobs?limit=100", headers=bearer(admin_key)).json()["data"] if j["retry_of"] in owners
    ]
    assert retried == []
