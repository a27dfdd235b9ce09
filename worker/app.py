"""The worker's Celery app. ``celery -A worker.app worker`` and ``inferq worker`` both use it.

The app is built on first access (module ``__getattr__``), from the process's settings; the models load in the
process that runs tasks (the prefork child, or the solo pool's process), never in a prefork parent.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from celery import Celery, signals

from inferq.celery_app import create_celery
from inferq.db import make_engine, make_sessionmaker
from inferq.settings import Settings, get_settings
from worker.runner import Runner
from worker.tasks import register_tasks

log = logging.getLogger(__name__)

#: Comma-separated models to load when a worker process starts (set by ``inferq worker --models``).
PRELOAD_ENV = "INFERQ_PRELOAD"

_app: Celery | None = None
_runner: Runner | None = None


def create_worker_app(settings: Settings) -> Celery:
    app = create_celery(settings, name="inferq-worker")
    register_tasks(app, get_runner)
    return app


def get_app() -> Celery:
    global _app
    if _app is None:
        _app = create_worker_app(get_settings())
    return _app


def get_runner() -> Runner:
    """This process's runner, built on first use: a fresh database engine and the model registry."""
    global _runner
    if _runner is None:
        from worker.registry import ModelRegistry

        settings = get_settings()
        _runner = Runner(
            settings,
            make_sessionmaker(make_engine(settings)),
            ModelRegistry(settings),
            worker=f"{socket.gethostname()}:{os.getpid()}",
        )
    return _runner


def preload(runner: Runner, names: list[str]) -> None:
    """Load the named models (every task they may serve is loaded on first use; the registry's task, or
    classification when it names none, now)."""
    from inferq.models import resolve_model
    from inferq.tasks import TaskName

    for name in names:
        spec = resolve_model(runner.settings, name)
        task = spec.task or TaskName.CLASSIFICATION
        try:
            runner.registry.load(name, task)
        except Exception:
            log.exception("could not preload %s; jobs that use it will record the error", name)


def _preload_from_env() -> None:
    names = [n for n in os.environ.get(PRELOAD_ENV, "").split(",") if n]
    if names:
        preload(get_runner(), names)


@signals.worker_process_init.connect
def _on_process_init(**_: Any) -> None:
    # A prefork child: drop anything inherited from the parent, then load models here.
    global _runner
    _runner = None
    _preload_from_env()


@signals.worker_init.connect
def _on_worker_init(sender: Any = None, **_: Any) -> None:
    # The solo and threads pools run tasks in this very process: preload here instead.
    pool = getattr(getattr(sender, "pool_cls", None), "__module__", "") if sender is not None else ""
    if "solo" in pool or "thread" in pool:
        _preload_from_env()


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        return get_app()
    raise AttributeError(name)
