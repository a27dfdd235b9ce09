"""The synchronous calls of the OpenAI-compatible API when the workers cannot answer: the app in this process on
real PostgreSQL and Redis, and no worker at all. A call past the timeout is 503 with Retry-After and its job
cancelled; a call that finds every slot taken is 503 at once. Both in OpenAI's error shape."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from inferq.settings import Settings
from server.app import create_app
from server.deps import Runtime
from tests.server.conftest import MODEL, MakeKey, bearer

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def slow_api(api_settings: Settings) -> Iterator[TestClient]:
    settings = api_settings.model_copy(update={"sync_timeout": 1.0, "sync_concurrency": 1})
    with TestClient(create_app(settings)) as client:
        yield client


def test_a_call_past_its_timeout_is_503_and_its_job_cancelled(slow_api: TestClient, make_key: MakeKey) -> None:
    # Given no worker consumes the queue
    key, _tenant = make_key()
    # When a synchronous classification is asked for
    answer = slow_api.post("/v1/classifications", headers=bearer(key), json={"model": MODEL, "input": "hello"})
    # Then it is refused once its timeout passed, in OpenAI's shape, with Retry-After
    assert answer.status_code == 503 and answer.headers["Retry-After"].isdigit()
    error = answer.json()["error"]
    assert error["code"] == "workers_saturated" and error["type"] == "server_error" and "param" in error
    # And its job was cancelled: nothing is left for a worker to pick up
    jobs = slow_api.get("/v1/jobs", headers=bearer(key)).json()["data"]
    assert [j["state"] for j in jobs] == ["cancelled"]


def test_a_call_that_finds_no_slot_is_503_at_once(slow_api: TestClient, make_key: MakeKey) -> None:
    key, _tenant = make_key()
    made = slow_api.app.state.runtime  # type: ignore[attr-defined]
    assert isinstance(made, Runtime)
    assert made.sync_slots.acquire(blocking=False)  # the one slot, taken
    try:
        answer = slow_api.post("/v1/embeddings", headers=bearer(key), json={"model": MODEL, "input": "hello"})
    finally:
        made.sync_slots.release()
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "5"
    assert answer.json()["error"]["code"] == "workers_saturated"
    # And nothing was submitted
    assert slow_api.get("/v1/jobs", headers=bearer(key)).json()["data"] == []
