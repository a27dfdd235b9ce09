"""The FastAPI app: `create_app(settings)`. The database engine and the Celery app are made when the app starts
(its lifespan) and closed when it stops; every request reads its key's row (`server.auth`), so several servers
behind a load balancer hold no state of their own."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from anyio import CapacityLimiter
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response

from inferq.settings import Settings, get_settings
from producer.client import Client
from server import errors
from server.deps import Runtime
from server.guards import RefuseMalformed
from server.headers import SecurityHeaders
from server.metrics import ApiMetrics, ObserveRequests
from server.openai import routes as openai_routes
from server.openai.validation import Validator
from server.routes import dispatcher, health, jobs, models, page, progress, webhook_secret
from server.uploads import remove_stale_uploads, upload_directory

API_VERSION = "v1"

#: Database connections a server process keeps (and as many more at a peak): its routes run in a pool of 40
#: threads (anyio's default), and a request that waits for a connection waits for nothing else.
API_DB_POOL_SIZE = 20
#: Connections of the status polls' own engine (autocommit, no ping on checkout: `server.auth.job_for_key`): a
#: poll holds one for a single statement, so a few serve every thread.
API_POLL_POOL_SIZE = 8
#: Threads a server process runs status polls in at once (`Runtime.poll_threads`).
API_POLL_THREADS = 4


def create_app(settings: Settings) -> FastAPI:
    """The HTTP API on ``settings``' database and broker (see the API contract in the README), the job pages at
    ``/`` and its Prometheus metrics at ``/metrics`` (`server.metrics`)."""
    metrics = ApiMetrics() if settings.api_metrics else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from inferq.celery_app import create_celery
        from inferq.db import make_engine, make_sessionmaker

        # What a killed server process left behind (`server.uploads`): older than this start, its writer gone.
        remove_stale_uploads(upload_directory(settings.upload_dir), time.time())
        engine = make_engine(settings, pool_size=API_DB_POOL_SIZE)
        if metrics is not None:
            metrics.watch_state(make_sessionmaker(engine, read_only=True), settings.metrics_cache_seconds)
        celery = create_celery(settings, name="inferq-api")
        client = Client(settings, engine=engine, celery=celery)
        # Made now, once, rather than by whichever request thread comes first (neither connects).
        _ = client.sessions, client.reader
        polls = make_engine(settings, pool_size=API_POLL_POOL_SIZE, pre_ping=False, isolation_level="AUTOCOMMIT")
        app.state.runtime = Runtime(
            settings,
            client,
            polls,
            CapacityLimiter(API_POLL_THREADS),
            threading.BoundedSemaphore(settings.sync_concurrency),
            Validator(client),
        )
        app.state.runtime.validation.start_sweeping()
        try:
            yield
        finally:
            app.state.runtime.validation.close()
            client.close()
            celery.close()
            polls.dispose()
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
    app.include_router(progress.router, prefix=f"/{API_VERSION}")
    app.include_router(models.router, prefix=f"/{API_VERSION}")
    app.include_router(dispatcher.router, prefix=f"/{API_VERSION}")
    app.include_router(webhook_secret.router, prefix=f"/{API_VERSION}")
    app.include_router(openai_routes.router, prefix=f"/{API_VERSION}")
    app.include_router(page.router)
    app.mount("/static", StaticFiles(directory=page.STATIC), name="static")
    if metrics is not None:

        @app.get("/metrics", include_in_schema=False)
        def scrape() -> Response:
            body, content_type = metrics.exposition()
            return Response(body, media_type=content_type)

    app.add_middleware(RefuseMalformed)
    app.add_middleware(ObserveRequests, metrics=metrics)
    # Outermost: every answer gets them, errors and the metrics' own included (`server.headers`).
    app.add_middleware(SecurityHeaders)
    return app


def app_from_environment() -> FastAPI:
    """`create_app` on the settings of the environment: the factory ``inferq serve --workers N`` hands uvicorn,
    which imports it in each worker process (and sets up its logging: uvicorn leaves it alone there)."""
    from inferq import logs

    settings = get_settings()
    logs.configure(settings.log_format, settings.log_level.upper())
    return create_app(settings)
