"""The FastAPI app: `create_app(settings)`. The database engine and the Celery app are made when the app starts
(its lifespan) and closed when it stops; every request reads its key's row (`server.auth`), so several servers
behind a load balancer hold no state of their own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from inferq.settings import Settings, get_settings
from producer.client import Client
from server import errors
from server.deps import Runtime
from server.routes import health, jobs, models

API_VERSION = "v1"


def create_app(settings: Settings) -> FastAPI:
    """The HTTP API on ``settings``' database and broker (see the API contract in the README)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from inferq.celery_app import create_celery
        from inferq.db import make_engine

        engine = make_engine(settings)
        celery = create_celery(settings, name="inferq-api")
        client = Client(settings, engine=engine, celery=celery)
        # Made now, once, rather than by whichever request thread comes first (neither connects).
        _ = client.sessions, client.reader
        app.state.runtime = Runtime(settings, client)
        try:
            yield
        finally:
            client.close()
            celery.close()
            engine.dispose()

    app = FastAPI(
        title="inferq",
        version="1",
        summary="Batch inference jobs for Hugging Face Transformers models: submit a file, poll, stream the results.",
        lifespan=lifespan,
    )
    errors.install(app)
    app.include_router(health.router)
    app.include_router(jobs.router, prefix=f"/{API_VERSION}")
    app.include_router(models.router, prefix=f"/{API_VERSION}")
    return app


def app_from_environment() -> FastAPI:
    """`create_app` on the settings of the environment: the factory ``inferq serve --workers N`` hands uvicorn,
    which imports it in each worker process."""
    return create_app(get_settings())
