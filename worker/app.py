"""The worker's Celery app. ``celery -A worker.app worker`` and ``inferq worker`` both use it.

The app is built on first access (module ``__getattr__``), from the process's settings; the models load in the
process that runs tasks (the prefork child, or the solo pool's process), never in a prefork parent.

Warm shutdown (SIGTERM): the chunk being computed stops after its current micro-batch, stores what ran and is
handed back to the broker. Under prefork the signal may reach the main process only (``kill PID``, ``docker
stop``) or the whole process group (a terminal, systemd): the main process sets a flag in memory it shares with
its children (`ShutdownFlag`), and a child that gets SIGTERM itself sets its own flag instead of dying on the spot.
A second SIGTERM (Celery's cold shutdown) ends the child as before.

Webhooks are sent apart from chunks: ``inferq worker`` consumes the chunk queues, and its main process starts a
webhook sender once it is ready (`WebhookSender`: ``inferq worker --webhooks-only``, a Celery worker of its own on
the webhook queue, with no models) and stops it when it stops; the sender stops by itself if its parent goes.

The main process also runs the reconciler (`inferq.reconciler.Reconciler`) every ``INFERQ_RECOVER_INTERVAL``
seconds: chunks whose message the broker lost are re-enqueued without a human; and, on PostgreSQL, the dispatcher
(`inferq.dispatcher.Dispatcher`), which one worker at a time leads: it sends chunks to the broker in fair order.

All of it is one `WorkerState` per process, whose methods the Celery signals call. ``inferq worker`` hands it
settings with its options applied (`run_worker`); ``celery -A worker.app`` leaves it to read the environment's. A
prefork child starts as a copy of its parent's state (settings included) and drops what is the parent's own.
"""

from __future__ import annotations

import logging
import mmap
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from typing import Any

from celery import Celery, signals
from sqlalchemy import Engine

from inferq import logs, metrics
from inferq.celery_app import create_celery
from inferq.db import make_engine, make_sessionmaker
from inferq.dispatcher import Dispatcher
from inferq.reconciler import Reconciler
from inferq.settings import Settings, get_settings, is_accelerator
from worker.runner import Runner
from worker.tasks import register_tasks
from worker.threads import (
    tokenizer_threads,
    torch_threads,
    undeclared_queues,
    use_tokenizer_threads,
    use_torch_threads,
)

log = logging.getLogger(__name__)


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


#: Seconds a new pool process may take to start, preloading its models, before billiard kills it as hung. Celery's
#: default (4 s) is shorter than loading a large model (or a small one on a busy machine): the pool would kill and
#: restart its processes forever.
PROC_ALIVE_TIMEOUT = 300.0


def preload(runner: Runner, names: list[str]) -> None:
    """Load the named models (every task they may serve is loaded on first use; the registry's task, or
    classification when it names none, now)."""
    from inferq.model_sources import resolve_model
    from inferq.task_specs import TaskName

    for name in names:
        spec = resolve_model(runner.settings, name)
        task = spec.task or TaskName.CLASSIFICATION
        try:
            runner.model_cache.load(name, task)
        except Exception:
            log.exception("could not preload %s; jobs that use it will record the error", name)


#: Seconds a webhook sender may take to stop after its worker's warm shutdown asks it to (it finishes the attempts
#: it is making, each cut at its deadline), beyond ``INFERQ_WEBHOOK_TIMEOUT``; then it is killed.
SENDER_STOP_MARGIN = 15.0

#: Seconds a worker waits for its webhook sender to consume before it says it is ready itself (and goes on without
#: it): a sender boots in seconds, like the worker, and side by side with it.
SENDER_READY_TIMEOUT = 120.0

#: Seconds between two looks of a webhook sender at whether the worker that started it is still there.
PARENT_CHECK_SECONDS = 1.0


class WebhookSender:
    """The webhook sender a worker's main process starts beside itself: ``python -m inferq.cli ARGV`` (a Celery
    worker on the webhook queue), writing to the same output, in the same process group (a signal to the group
    reaches it too), told the worker's pid so that it stops if the worker dies without stopping it.

    Started when the worker starts (they boot side by side), and waited for before the worker says it is ready: the
    sender writes a byte to a pipe (``--ready-fd``) once it consumes, so that a worker that says ``ready.`` sends
    webhooks too (a delivery left unconsumed while the sender boots would be sent again by a reconciler)."""

    def __init__(self, argv: list[str], stop_timeout: float) -> None:
        self.argv = argv
        self.stop_timeout = stop_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._ready: int | None = None

    def start(self) -> None:
        self._ready, ready_w = os.pipe()
        try:
            argv = [sys.executable, "-m", "inferq.cli", *self.argv, "--ready-fd", str(ready_w)]
            self._process = subprocess.Popen(argv, pass_fds=(ready_w,))
        finally:
            os.close(ready_w)
        log.info("webhook sender started (pid %d)", self._process.pid)

    def wait_ready(self, timeout: float) -> bool:
        """Wait until the sender consumes (``False``: it did not within ``timeout`` seconds, or it exited)."""
        if self._ready is None:
            return False
        try:
            readable, _, _ = select.select([self._ready], [], [], timeout)
            ready = bool(readable) and os.read(self._ready, 1) == b"1"
        finally:
            os.close(self._ready)
            self._ready = None
        if not ready:
            log.error("the webhook sender is not ready after %gs; webhooks wait until it is", timeout)
        return ready

    def request_stop(self) -> None:
        """Ask it for a warm shutdown (safe in a signal handler: one ``kill``)."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        """Ask it to stop, wait for it, kill it past the timeout."""
        if self._process is None:
            return
        self.request_stop()
        try:
            self._process.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None


def watch_parent(parent_pid: int) -> threading.Thread:
    """Stop this worker (a warm shutdown) once ``parent_pid`` is no longer its parent: the worker that started this
    webhook sender died without stopping it (SIGKILL)."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            threading.Event().wait(PARENT_CHECK_SECONDS)
        log.warning("the worker that started this webhook sender (pid %d) has gone: stopping", parent_pid)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, name="inferq-parent-watch", daemon=True)
    thread.start()
    return thread


class WorkerState:
    """This process's part of a worker: its settings, Celery app, runner, shutdown flag and reconciler, and which
    process is the worker's main one. Each is made on first use or by the signal that needs it."""

    def __init__(self) -> None:
        self._settings: Settings | None = None
        self._app: Celery | None = None
        self._runner: Runner | None = None
        self._shutdown: ShutdownFlag | None = None
        #: The worker's main process (pool processes are forked from it): its own SIGTERM is Celery's business.
        #: None outside a worker.
        self._main_pid: int | None = None
        #: The SIGTERM handler a pool process had before `_on_child_sigterm` (billiard's, which ends the process).
        self._previous_sigterm: Any = signal.SIG_DFL
        self._reconciler: Reconciler | None = None
        self._reconciler_engine: Engine | None = None
        #: The dispatcher (``INFERQ_DISPATCH=fair`` on PostgreSQL), with an engine of its own: the leader's lock
        #: holds one of its connections.
        self._dispatcher: Dispatcher | None = None
        self._dispatcher_engine: Engine | None = None
        #: torch's intra-op threads in each process that runs models (`torch_threads`), decided at worker start.
        self._torch_threads: int | None = None
        #: The fast tokenizer's threads in each such process (`tokenizer_threads`), decided with them.
        self._tokenizer_threads: int | None = None
        #: The ``/metrics`` endpoint, served by the main process (``INFERQ_METRICS_PORT``; `inferq.metrics`).
        self._metrics_server: metrics.MetricsServer | None = None
        #: The webhook sender this worker's main process starts once ready (``inferq worker``); None: none.
        self._sender: WebhookSender | None = None
        #: This worker only sends webhooks (``--webhooks-only``): no models, no reconciler, no metrics.
        self._webhooks_only = False
        #: The worker that started this webhook sender, watched so that the sender stops when it goes.
        self._parent_pid: int | None = None
        #: Where this webhook sender tells the worker that started it that it consumes.
        self._ready_fd: int | None = None

    @property
    def settings(self) -> Settings:
        """The settings given to `configure`, else the environment's."""
        if self._settings is None:
            self._settings = get_settings()
        return self._settings

    def configure(
        self,
        settings: Settings,
        *,
        webhook_sender: list[str] | None = None,
        webhooks_only: bool = False,
        parent_pid: int | None = None,
        ready_fd: int | None = None,
    ) -> None:
        """Run this worker with ``settings`` instead of the environment's (before the app is built);
        ``webhook_sender``: the ``inferq`` command line of the webhook sender to start beside it; ``webhooks_only``:
        this worker is such a sender (started by the worker ``parent_pid``, told on ``ready_fd`` once it consumes,
        when given)."""
        if self._app is not None:
            raise RuntimeError("the worker's app is already built")
        self._settings = settings
        if webhook_sender is not None:
            self._sender = WebhookSender(webhook_sender, settings.webhook_timeout + SENDER_STOP_MARGIN)
        self._webhooks_only = webhooks_only
        self._parent_pid = parent_pid
        self._ready_fd = ready_fd

    @property
    def app(self) -> Celery:
        if self._app is None:
            app = create_celery(self.settings, name="inferq-worker")
            app.conf.worker_proc_alive_timeout = PROC_ALIVE_TIMEOUT
            register_tasks(app, self.runner)
            self._app = app
        return self._app

    def runner(self) -> Runner:
        """This process's runner, built on first use: a fresh database engine and the model cache."""
        if self._runner is None:
            from worker.model_cache import ModelCache

            settings = self.settings
            self._runner = Runner(
                settings,
                make_sessionmaker(make_engine(settings)),
                ModelCache(settings, freeze=True),
                worker=f"{socket.gethostname()}:{os.getpid()}",
                stopping=self.shutdown_flag(),
            )
        return self._runner

    def shutdown_flag(self) -> ShutdownFlag:
        if self._shutdown is None:
            self._shutdown = ShutdownFlag()
        return self._shutdown

    def _ready_to_run(self) -> None:
        """This process runs the models: its share of torch's and the tokenizer's threads, then the models to
        preload."""
        use_torch_threads(self._torch_threads)
        use_tokenizer_threads(self._tokenizer_threads)
        if self.settings.preload:
            preload(self.runner(), self.settings.preload)

    # -- what the Celery signals call ----------------------------------------------------------------------------

    def on_worker_init(self, sender: Any = None, **_: Any) -> None:
        # Made here, before the pool forks, so that every child shares it.
        self._shutdown = ShutdownFlag()
        self._main_pid = os.getpid()
        if self._webhooks_only:
            return  # no models, no metrics
        if self._sender is not None:
            self._sender.start()  # it boots while this worker does
        if self.settings.metrics_port is not None and self._metrics_server is None:
            # Before the pool forks too: every process keeps its metrics in the directory the endpoint reads.
            self._metrics_server = metrics.MetricsServer(self.settings, metrics.prepare_multiprocess())
            metrics.activate(metrics.WorkerMetrics())
        # The solo and threads pools run tasks in this very process: preload here instead.
        pool = getattr(getattr(sender, "pool_cls", None), "__module__", "") if sender is not None else ""
        in_this_process = "solo" in pool or "thread" in pool
        # Prefork: this many processes share the cores (a threads pool shares one process's torch threads).
        processes = 1 if in_this_process else int(getattr(sender, "concurrency", None) or 1)
        self._torch_threads = torch_threads(self.settings, processes)
        self._tokenizer_threads = tokenizer_threads(processes)
        if in_this_process:
            self._ready_to_run()

    def on_process_init(self, **_: Any) -> None:
        # A prefork child: drop anything inherited from the parent, then load models here.
        self._runner = None
        self._sender = None  # the main process's to wait for and stop
        if self._reconciler_engine is not None:
            # The parent's connections stay the parent's: forget them here without closing them.
            self._reconciler_engine.dispose(close=False)
        self._reconciler = self._reconciler_engine = None
        if self._dispatcher_engine is not None:
            self._dispatcher_engine.dispose(close=False)  # the leader's lock stays the parent's
        self._dispatcher = self._dispatcher_engine = None
        if self._metrics_server is not None:
            self._metrics_server.forget()
        if not self._webhooks_only:
            self._ready_to_run()

    def on_process_shutdown(self, pid: int | None = None, **_: Any) -> None:
        # A pool process ends: its share of the live gauges goes.
        metrics.process_exited(pid or os.getpid())

    def on_logging_setup(self, logger: logging.Logger | None = None, **_: Any) -> None:
        """Celery has set up a logger's handlers: they write ``INFERQ_LOG_FORMAT``, redacted."""
        if logger is not None:
            logs.use_format(logger, self.settings.log_format)
            if logger is logging.getLogger():
                logs.use_format(logging.getLogger("multiprocessing"), self.settings.log_format)

    def on_task_prerun(self, **_: Any) -> None:
        flag = self._shutdown
        if flag is not None and flag.here and not flag.worker_stopping:
            # This pool process got a SIGTERM of its own (not a whole-worker shutdown) and handed its chunk back: it
            # ends now, and the message it was just given goes back to the broker as for any lost pool process.
            os.kill(os.getpid(), signal.SIGTERM)
        # Installed here rather than at process start, where billiard installs its own handler after Celery's hooks.
        current = signal.getsignal(signal.SIGTERM)
        in_pool_process = self._main_pid not in (None, os.getpid())  # forked from a worker's main process
        # `!=`, not `is not`: each access to a bound method makes a new object, equal to the others.
        if current != self._on_child_sigterm and in_pool_process:
            self._previous_sigterm = current
            signal.signal(signal.SIGTERM, self._on_child_sigterm)

    def _on_child_sigterm(self, signum: int, frame: Any) -> None:
        """A pool process's SIGTERM: while a chunk runs, finish the current micro-batch and hand the rest back; when
        idle, or at a second SIGTERM (Celery's cold shutdown), end as a pool process always did."""
        signal.signal(signal.SIGTERM, self._previous_sigterm)
        if self._runner is not None and self._runner.busy:
            self.shutdown_flag().here = True
            log.warning("SIGTERM: finishing the current micro-batch, then handing the rest of the chunk back")
            return
        if callable(self._previous_sigterm):
            self._previous_sigterm(signum, frame)
        else:
            os.kill(os.getpid(), signal.SIGTERM)

    def on_worker_ready(self, sender: Any = None, **_: Any) -> None:
        if self._webhooks_only:
            if self._parent_pid is not None:
                watch_parent(self._parent_pid)
            if self._ready_fd is not None:
                os.write(self._ready_fd, b"1")
                os.close(self._ready_fd)
                self._ready_fd = None
            return
        if self._sender is not None:
            # Before Celery logs this worker's "ready.": once it does, webhooks are sent too.
            self._sender.wait_ready(SENDER_READY_TIMEOUT)
        if self._metrics_server is not None:
            try:
                self._metrics_server.start()
            except OSError as exc:  # the port is taken: the worker runs on, without its endpoint
                log.error("metrics: cannot serve on port %s: %s", self.settings.metrics_port, exc)
        settings = self.settings
        consumed = getattr(getattr(getattr(sender, "app", None), "amqp", None), "queues", None)
        undeclared = undeclared_queues(settings, getattr(consumed, "consume_from", None) or {})
        if undeclared:
            log.warning(
                "this worker runs on %s, but INFERQ_QUEUE_DEVICES puts its queues %s on %s: jobs submitted with the"
                " same setting get chunks sized for that device (configuration: Chunk size)",
                settings.device,
                ", ".join(undeclared),
                "a CPU" if is_accelerator(settings.device) else "an accelerator",
            )
        if settings.fair_dispatch and self._dispatcher is None:
            # No ping before each connection a round takes from the pool (a fifth of an idle round's CPU): a round
            # that meets a dropped connection fails, the pool starts afresh, and the next round runs again.
            self._dispatcher_engine = make_engine(settings, pre_ping=False)
            self._dispatcher = Dispatcher(
                settings,
                self._dispatcher_engine,
                make_sessionmaker(self._dispatcher_engine),
                create_celery(settings, name="inferq-dispatcher"),
            )
            self._dispatcher.start()
        if settings.recover_interval <= 0 or self._reconciler is not None:
            return
        self._reconciler_engine = make_engine(settings)
        self._reconciler = Reconciler(
            settings, make_sessionmaker(self._reconciler_engine), create_celery(settings, name="inferq-reconciler")
        )
        self._reconciler.start()

    def on_shutting_down(self, **_: Any) -> None:
        # In the main process's signal handler: set flags only.
        self.shutdown_flag().request()
        if self._sender is not None:
            self._sender.request_stop()
        if self._reconciler is not None:
            self._reconciler.stop(wait=False)
        if self._dispatcher is not None:
            self._dispatcher.stop(wait=False)

    def on_worker_shutdown(self, **_: Any) -> None:
        if self._sender is not None:
            self._sender.stop()
        if self._reconciler is not None:
            self._reconciler.stop()
        if self._reconciler_engine is not None:
            self._reconciler_engine.dispose()
        self._reconciler = self._reconciler_engine = None
        if self._dispatcher is not None:
            self._dispatcher.stop()
        if self._dispatcher_engine is not None:
            self._dispatcher_engine.dispose()
        self._dispatcher = self._dispatcher_engine = None
        if self._metrics_server is not None:
            self._metrics_server.stop()
            self._metrics_server = None
            metrics.activate(None)

    def connect(self) -> None:
        """Have Celery's signals call this state's methods."""
        signals.worker_init.connect(self.on_worker_init, weak=False)
        signals.worker_process_init.connect(self.on_process_init, weak=False)
        signals.task_prerun.connect(self.on_task_prerun, weak=False)
        signals.worker_ready.connect(self.on_worker_ready, weak=False)
        signals.worker_shutting_down.connect(self.on_shutting_down, weak=False)
        signals.worker_shutdown.connect(self.on_worker_shutdown, weak=False)
        signals.worker_process_shutdown.connect(self.on_process_shutdown, weak=False)
        signals.after_setup_logger.connect(self.on_logging_setup, weak=False)
        signals.after_setup_task_logger.connect(self.on_logging_setup, weak=False)


#: This process's worker.
_state = WorkerState()
_state.connect()


def get_app() -> Celery:
    return _state.app


def run_worker(
    settings: Settings,
    argv: list[str],
    *,
    webhook_sender: list[str] | None = None,
    webhooks_only: bool = False,
    parent_pid: int | None = None,
    ready_fd: int | None = None,
) -> None:
    """Run a Celery worker (``argv``: its command line after ``celery``) with these settings: its pool processes,
    forked from this one, run with them too. The keywords are `WorkerState.configure`'s."""
    _state.configure(
        settings, webhook_sender=webhook_sender, webhooks_only=webhooks_only, parent_pid=parent_pid, ready_fd=ready_fd
    )
    from celery import signals

    controllers: list[Any] = []

    def keep(sender: Any, **_: Any) -> None:
        controllers.append(sender)

    signals.worker_init.connect(keep, weak=False)
    try:
        _state.app.worker_main(argv)
    finally:
        signals.worker_init.disconnect(keep)
    # `worker_main` drops the worker's exit status: a worker that stopped on an unrecoverable error (its node's name
    # taken on RabbitMQ, a broker refusing it) would exit 0, which a supervisor restarting on failure takes for a
    # clean stop. The status is its controller's.
    status = controllers[-1].exitcode if controllers else None
    if status:
        raise SystemExit(status)


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        return get_app()
    raise AttributeError(name)
