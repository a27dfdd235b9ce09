"""The worker's Celery app. ``celery -A worker.app worker`` and ``inferq worker`` both use it.

The app is built on first access (module ``__getattr__``), from the process's settings; the models load in the
process that runs tasks (the prefork child, or the solo pool's process), never in a prefork parent.

Warm shutdown (SIGTERM): the chunk being computed stops after its current micro-batch, stores what ran and is
handed back to the broker. Under prefork the signal may reach the main process only (``kill PID``, ``docker
stop``) or the whole process group (a terminal, systemd): the main process sets a flag in memory it shares with
its children (`ShutdownFlag`), and a child that gets SIGTERM itself sets its own flag instead of dying on the spot.
A second SIGTERM (Celery's cold shutdown) ends the child as before.

The main process also runs the reconciler (`inferq.maintenance.Reconciler`) every ``INFERQ_RECOVER_INTERVAL``
seconds: chunks whose message the broker lost are re-enqueued without a human.
"""

from __future__ import annotations

import logging
import mmap
import os
import signal
import socket
from typing import Any

from celery import Celery, signals
from sqlalchemy import Engine

from inferq.celery_app import create_celery
from inferq.db import make_engine, make_sessionmaker
from inferq.reconciler import Reconciler
from inferq.settings import Settings, get_settings
from worker.runner import Runner
from worker.tasks import register_tasks

log = logging.getLogger(__name__)

#: Comma-separated models to load when a worker process starts (set by ``inferq worker --models``).
PRELOAD_ENV = "INFERQ_PRELOAD"


class ShutdownFlag:
    """Whether this worker is shutting down. One byte of anonymous shared memory, made in the main process before
    the pool forks, is set by the main process's warm shutdown and read by every child; a child's own SIGTERM sets
    a flag of its own (it must not stop its siblings)."""

    def __init__(self) -> None:
        self._shared = mmap.mmap(-1, 1)
        self.here = False

    def request(self) -> None:
        """The whole worker is shutting down (main process)."""
        self._shared[0] = 1

    @property
    def worker_stopping(self) -> bool:
        return self._shared[0] == 1

    def __call__(self) -> bool:
        return self.here or self.worker_stopping


_app: Celery | None = None
_runner: Runner | None = None
_shutdown: ShutdownFlag | None = None
_reconciler: Reconciler | None = None
_reconciler_engine: Engine | None = None


def shutdown_flag() -> ShutdownFlag:
    global _shutdown
    if _shutdown is None:
        _shutdown = ShutdownFlag()
    return _shutdown


#: Seconds a new pool process may take to start, preloading its models, before billiard kills it as hung. Celery's
#: default (4 s) is shorter than loading a large model (or a small one on a busy machine): the pool would kill and
#: restart its processes forever.
PROC_ALIVE_TIMEOUT = 300.0


def create_worker_app(settings: Settings) -> Celery:
    app = create_celery(settings, name="inferq-worker")
    app.conf.worker_proc_alive_timeout = PROC_ALIVE_TIMEOUT
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
            stopping=shutdown_flag(),
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
    global _runner, _reconciler, _reconciler_engine
    _runner = None
    if _reconciler_engine is not None:
        # The parent's connections stay the parent's: forget them here without closing them.
        _reconciler_engine.dispose(close=False)
    _reconciler = _reconciler_engine = None
    _preload_from_env()


#: The SIGTERM handler a pool process had before `_on_child_sigterm` (billiard's, which ends the process).
_previous_sigterm: Any = signal.SIG_DFL


@signals.task_prerun.connect
def _on_task_prerun(**_: Any) -> None:
    global _previous_sigterm
    flag = _shutdown
    if flag is not None and flag.here and not flag.worker_stopping:
        # This pool process got a SIGTERM of its own (not a whole-worker shutdown) and handed its chunk back: it
        # ends now, and the message it was just given goes back to the broker as for any lost pool process.
        os.kill(os.getpid(), signal.SIGTERM)
    # Installed here rather than at process start, where billiard installs its own handler after Celery's hooks.
    current = signal.getsignal(signal.SIGTERM)
    in_pool_process = _main_pid not in (-1, os.getpid())  # forked from a worker's main process
    if current is not _on_child_sigterm and in_pool_process:
        _previous_sigterm = current
        signal.signal(signal.SIGTERM, _on_child_sigterm)


def _on_child_sigterm(signum: int, frame: Any) -> None:
    """A pool process's SIGTERM: while a chunk runs, finish the current micro-batch and hand the rest back; when
    idle, or at a second SIGTERM (Celery's cold shutdown), end as a pool process always did."""
    signal.signal(signal.SIGTERM, _previous_sigterm)
    if _runner is not None and _runner.busy:
        shutdown_flag().here = True
        log.warning("SIGTERM: finishing the current micro-batch, then handing the rest of the chunk back")
        return
    if callable(_previous_sigterm):
        _previous_sigterm(signum, frame)
    else:
        os.kill(os.getpid(), signal.SIGTERM)


#: The worker's main process (pool processes are forked from it): its own SIGTERM is Celery's business. -1 outside
#: a worker.
_main_pid = -1


@signals.worker_init.connect
def _on_worker_init(sender: Any = None, **_: Any) -> None:
    global _shutdown, _main_pid
    # Made here, before the pool forks, so that every child shares it.
    _shutdown = ShutdownFlag()
    _main_pid = os.getpid()
    # The solo and threads pools run tasks in this very process: preload here instead.
    pool = getattr(getattr(sender, "pool_cls", None), "__module__", "") if sender is not None else ""
    if "solo" in pool or "thread" in pool:
        _preload_from_env()


@signals.worker_shutting_down.connect
def _on_shutting_down(**_: Any) -> None:
    # In the main process's signal handler: set flags only.
    shutdown_flag().request()
    if _reconciler is not None:
        _reconciler.stop(wait=False)


@signals.worker_ready.connect
def _on_worker_ready(**_: Any) -> None:
    global _reconciler, _reconciler_engine
    settings = get_settings()
    if settings.recover_interval <= 0 or _reconciler is not None:
        return
    _reconciler_engine = make_engine(settings)
    _reconciler = Reconciler(
        settings, make_sessionmaker(_reconciler_engine), create_celery(settings, name="inferq-reconciler")
    )
    _reconciler.start()


@signals.worker_shutdown.connect
def _on_worker_shutdown(**_: Any) -> None:
    global _reconciler, _reconciler_engine
    if _reconciler is not None:
        _reconciler.stop()
    if _reconciler_engine is not None:
        _reconciler_engine.dispose()
    _reconciler = _reconciler_engine = None


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        return get_app()
    raise AttributeError(name)
