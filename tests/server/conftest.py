"""The HTTP API's fixtures: settings on real PostgreSQL and Redis, the app in this process (Starlette's TestClient,
httpx over ASGI, the app's lifespan run), keys of fresh tenants, jobs stored directly."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from inferq.db import make_engine, make_sessionmaker
from inferq.keys import create_key
from inferq.schema import Job, OpenAIFile, utcnow
from inferq.settings import Settings
from inferq.states import ItemState, JobState
from inferq.store import openai as openai_store
from inferq.task_specs import TaskName
from producer.client import JobOptions, store_job
from producer.inputs import InputRecord
from server.app import create_app
from server.openai import files
from tests.support.records import put_result

#: The tiny model the API tests submit to (`tests.conftest.tiny_models`).
MODEL = "cls-distilbert"

Headers = dict[str, str]


def bearer(key: str) -> Headers:
    return {"Authorization": f"Bearer {key}"}


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture(scope="module")
def api_env(migrated_postgres: str, redis_url: str, registry_json: str) -> dict[str, str]:
    """The environment of the module's API (and worker): the session's database, Redis, a queue of its own."""
    return {
        "INFERQ_DATABASE_URL": migrated_postgres,
        "INFERQ_BROKER_URL": redis_url,
        "INFERQ_MODELS": registry_json,
        "INFERQ_DEFAULT_QUEUE": f"inferq-test-{uuid.uuid4().hex[:10]}",
        "INFERQ_RECOVER_INTERVAL": "0",
        "OMP_NUM_THREADS": "1",
    }


@pytest.fixture(scope="module")
def api_settings(api_env: dict[str, str]) -> Settings:
    return Settings(
        database_url=api_env["INFERQ_DATABASE_URL"],
        broker_url=api_env["INFERQ_BROKER_URL"],
        models=json.loads(api_env["INFERQ_MODELS"]),
        default_queue=api_env["INFERQ_DEFAULT_QUEUE"],
    )


@pytest.fixture(scope="module")
def sessions(api_settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(api_settings)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture(scope="module")
def api(api_settings: Settings) -> Iterator[TestClient]:
    """The app in this process, started (its lifespan ran) for the module."""
    with TestClient(create_app(api_settings)) as client:
        yield client


MakeKey = Callable[..., tuple[str, str]]


@pytest.fixture(scope="module")
def make_key(sessions: sessionmaker[Session]) -> MakeKey:
    """``make_key(tenant=None, admin=False, quota=None) -> (key, tenant)``: a key of a fresh tenant unless named."""

    def make(tenant: str | None = None, *, admin: bool = False, quota: int | None = None) -> tuple[str, str]:
        name = tenant or f"t-{uuid.uuid4().hex[:12]}"
        with sessions.begin() as session:
            key, _ = create_key(session, name, admin=admin, max_queued_items=quota)
        return key, name

    return make


StoreJob = Callable[..., str]


@pytest.fixture(scope="module")
def stored_job(sessions: sessionmaker[Session], api_settings: Settings) -> StoreJob:
    """``stored_job(tenant, n=2, metadata=None, failed=(), state=None) -> job id``: a job stored directly (nothing
    enqueued); items of ``failed`` indices marked failed, the job put in ``state``."""

    def store(
        tenant: str,
        n: int = 2,
        *,
        metadata: dict[str, str] | None = None,
        failed: tuple[int, ...] = (),
        state: JobState | None = None,
    ) -> str:
        job_id = uuid.uuid4().hex
        records = [InputRecord(i + 1, f"c{i}", {"text": f"text number {i}"}) for i in range(n)]
        with sessions.begin() as session:
            store_job(
                session,
                job_id,
                TaskName.CLASSIFICATION,
                MODEL,
                {"top_k": 1, "function_to_apply": "default"},
                records,
                256,
                api_settings.default_queue,
                options=JobOptions(tenant=tenant, metadata=metadata),
            )
            if failed:
                for index in failed:
                    put_result(
                        session,
                        job_id,
                        index,
                        state=ItemState.FAILED,
                        error_code="inference_error",
                        error_message="boom",
                        finished_at=utcnow(),
                    )
                session.execute(update(Job).where(Job.id == job_id).values(failed=len(failed)))
            if state is not None:
                session.execute(update(Job).where(Job.id == job_id).values(state=state))
        return job_id

    return store


# -- the OpenAI-compatible API, on SQLite and on PostgreSQL ------------------------------------------------------------


@dataclass
class OpenAISetup:
    """The OpenAI-compatible API's settings (a files directory, the tiny classification model as ``cls``), its
    sessions and a key of tenant ``mine``."""

    settings: Settings
    sessions: sessionmaker[Session]
    key: str
    tenant: str = "mine"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def setup(
    request: pytest.FixtureRequest, tmp_path: Path, tiny_models: dict[str, Path], queue_name: str
) -> Iterator[OpenAISetup]:
    model = {"cls": {"source": str(tiny_models["cls-distilbert"]), "task": "classification"}}
    if request.param == "sqlite":
        base: Settings = request.getfixturevalue("sqlite_settings")
    else:
        url = request.getfixturevalue("own_postgres")
        base = Settings(database_url=url, broker_url=request.getfixturevalue("redis_url"), default_queue=queue_name)
    settings = Settings.model_validate({**base.model_dump(), "files_dir": tmp_path / "files", "models": model})
    engine = make_engine(settings)
    sessions = make_sessionmaker(engine)
    with sessions.begin() as session:
        key, _ = create_key(session, "mine")
    yield OpenAISetup(settings, sessions, key)
    engine.dispose()


def lines(model: str = "cls", n: int = 3) -> bytes:
    rows = [
        {"custom_id": f"r{i}", "method": "POST", "url": "/v1/classifications", "body": {"model": model, "input": t}}
        for i, t in enumerate(["good", "bad", "fine", "awful"][:n])
    ]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def stored_file(setup: OpenAISetup, data: bytes) -> str:
    """An uploaded file, stored directly: its bytes in the files directory, its row."""
    file_id = files.new_id("file-")
    files.files_dir(setup.settings.files_dir)
    files.file_path(setup.settings.files_dir, file_id).write_bytes(data)
    with setup.sessions.begin() as session:
        row = OpenAIFile(
            id=file_id, tenant=setup.tenant, purpose="batch", filename="in.jsonl", bytes=len(data), lines=3
        )
        openai_store.add_file(session, row)
    return file_id
