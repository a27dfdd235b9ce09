"""Shared fixtures: tiny models built locally, real PostgreSQL/Redis, settings pointing at them."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from inferq.settings import Settings
from tests.support.services import fresh_postgres_database, require_redis


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if not has_gpu:
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
    # Files holding a slow test first, each file's tests in their order: under `make test`'s two processes the
    # longest files start early instead of leaving one process running alone at the end.
    slow_files = {item.nodeid.split("::")[0] for item in items if "slow" in item.keywords}
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in slow_files)


@pytest.fixture(scope="session", autouse=True)
def ctranslate2_conversions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """CTranslate2 conversions (the backend ``auto`` picks for embeddings, `worker.backends.AUTO_TABLE`) into this
    session's temporary directory, not the user's cache: the worker processes the tests start inherit it."""
    import os

    before = os.environ.get("INFERQ_CT2_CACHE")
    os.environ["INFERQ_CT2_CACHE"] = str(tmp_path_factory.mktemp("ct2"))
    yield
    if before is None:
        os.environ.pop("INFERQ_CT2_CACHE", None)
    else:
        os.environ["INFERQ_CT2_CACHE"] = before


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread: these models are tiny, and on a small shared machine more threads only contend.
    A module asks for it with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Classification models of three families, built and saved here (random weights, local tokenizers)."""
    from inferq.task_specs import TaskName
    from tests.support.tiny_models import build_model

    root = tmp_path_factory.mktemp("models")
    spec = {
        "cls-distilbert": dict(arch="distilbert", labels=["NEGATIVE", "POSITIVE"]),
        "cls-roberta": dict(arch="roberta", labels=["NEGATIVE", "NEUTRAL", "POSITIVE"]),
        "cls-bert-pair": dict(arch="bert", labels=["not_paraphrase", "paraphrase"], lowercase=False),
    }
    return {
        name: build_model(root / name, TaskName.CLASSIFICATION, initializer_range=0.3, **kw)  # type: ignore[arg-type]
        for name, kw in spec.items()
    }


@pytest.fixture(scope="session")
def registry_json(tiny_models: dict[str, Path]) -> str:
    return json.dumps({name: {"source": str(path), "task": "classification"} for name, path in tiny_models.items()})


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> str:
    return require_redis()


@pytest.fixture
def queue_name() -> str:
    """A queue of this test's own, so concurrent runs and leftovers never meet."""
    return f"inferq-test-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def migrated_postgres(postgres_url: str) -> str:
    from inferq import migrate

    migrate.upgrade(Settings(database_url=postgres_url))
    return postgres_url


@pytest.fixture
def own_postgres() -> Iterator[str]:
    """A migrated PostgreSQL database of this test's own, dropped afterwards, for a test that must not meet other
    tests' jobs: the reconciler, `inferq recover` and the webhook sender act on every job of their database."""
    from inferq import migrate

    with fresh_postgres_database() as url:
        migrate.upgrade(Settings(database_url=url))
        yield url


@pytest.fixture(params=["postgresql", "sqlite"])
def either_database(request: pytest.FixtureRequest) -> Iterator[sessionmaker[Session]]:
    """Sessions of the migrated PostgreSQL database, then of a migrated SQLite one: a store test that runs on both
    through the store's dialect seam."""
    from inferq.db import make_engine, make_sessionmaker

    if request.param == "postgresql":
        settings = Settings(database_url=request.getfixturevalue("migrated_postgres"))
    else:
        settings = request.getfixturevalue("sqlite_settings")
    engine = make_engine(settings)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    from inferq import migrate

    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'inferq.db'}",
        broker_url=f"sqla+sqlite:///{tmp_path / 'broker.db'}",
    )
    migrate.upgrade(settings)
    return settings
