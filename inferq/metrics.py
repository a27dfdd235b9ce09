"""Prometheus metrics: what a worker counts and times, and the state of the system read from SQL on a scrape.

Torch-free, so that any process can expose them (a worker today; the HTTP API can register `StateCollector` too).
``prometheus-client`` is imported only where metrics are turned on (``INFERQ_METRICS_PORT``), never by a process
that runs without them.

Conventions (Prometheus'): base units (seconds, tokens, items), counters end in ``_total``, durations in
``_seconds``, and labels have few values: ``task``, ``model``, ``queue``, ``outcome``, ``reason``. Never a job id.

**A worker's numbers.** Each process of a worker counts what it does itself: a prefork pool's children run the
chunks, the main process runs the reconciler. Prometheus' multiprocess mode adds them up. The worker's main process
points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before the pool forks (`prepare_multiprocess`); every
process then keeps its counters in a file of its own there (``counter_<pid>.db`` …), and the main process serves
``/metrics`` (`MetricsServer`) by adding up every file (`MultiProcessCollector`). A pool process that exits keeps
its counts (its files stay); only its share of the live gauge (``inferq_chunks_in_progress``) is dropped
(`mark_process_dead`, when it exits, and on each scrape for a process that was killed).

**The hot path.** Updates are per chunk or per micro-batch, never per item. With metrics off, every call here is
one function call that finds no `WorkerMetrics` and returns; the engine asks once per chunk.

**State from SQL** (`StateCollector`): jobs by state, unfinished items by queue and model, the age of the oldest
queued chunk by queue, webhook deliveries by state (sent by workers; the table is their record), read on a scrape
with four queries and reused for ``INFERQ_METRICS_CACHE_SECONDS``.
They describe the whole database: every worker shows the same values (aggregate them with ``max``, not ``sum``).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    import numpy as np
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker

    from inferq.settings import Settings

log = logging.getLogger(__name__)

#: Buckets of one forward pass (a micro-batch): a millisecond (a tiny model on a GPU) to half a minute (a huge
#: batch on a CPU).
FORWARD_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Buckets of a chunk's run (claim to stored results): tens of milliseconds (a few items) to half an hour.
CHUNK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
#: Buckets of a chunk's wait in its queue: none (idle workers) to hours (a backlog).
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 10800.0)
#: Buckets of a model load: a tiny local model to a large one from the hub.
LOAD_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

#: The environment variable of prometheus-client's multiprocess mode.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class ClaimLike(Protocol):
    """What the metrics read of a claimed chunk (`inferq.store.chunks.Claim`)."""

    @property
    def task(self) -> Any: ...
    @property
    def model(self) -> str: ...
    @property
    def queue(self) -> str | None: ...
    @property
    def attempts(self) -> int: ...
    @property
    def waiting_since(self) -> dt.datetime | None: ...


class StoredLike(Protocol):
    """What the metrics read of a stored chunk (`inferq.store.chunks.StoredChunk`)."""

    @property
    def succeeded(self) -> int: ...
    @property
    def failed(self) -> int: ...


def _name(value: Any) -> str:
    """A label value: an enum's value, else the string."""
    return str(getattr(value, "value", value))


F = TypeVar("F")


class WorkerMetrics:
    """A worker process's metrics (every name is in `WORKER_METRICS`). ``registry``: where they are registered;
    ``None`` in multiprocess mode, where the main process reads every process's files instead."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        by_model = ("task", "model")
        by_chunk = ("task", "model", "queue")
        self.items = Counter(
            "inferq_items",
            "Items this worker stored a result or an error for, by outcome (succeeded, failed).",
            (*by_chunk, "outcome"),
            registry=registry,
        )
        self.chunk_deliveries = Counter(
            "inferq_chunk_deliveries",
            "Deliveries of chunk messages, by what they came to: done, skipped (nothing left to do), stopped (job"
            " cancelled), handed_back (warm shutdown), deferred (in another worker's batch), retried (a transient"
            " failure; Celery retries the message).",
            ("outcome",),
            registry=registry,
        )
        self.chunks_redelivered = Counter(
            "inferq_chunks_redelivered",
            "Chunks claimed again after an earlier claim did not finish them (a worker died, a shutdown, a lost lease).",
            by_chunk,
            registry=registry,
        )
        self.chunks_exhausted = Counter(
            "inferq_chunks_exhausted",
            "Chunks given up after too many claims: their unfinished items failed with attempts_exhausted.",
            by_chunk,
            registry=registry,
        )
        self.requeued = Counter(
            "inferq_chunks_requeued",
            "Chunks the reconciler re-enqueued, by why their message was gone (lease_expired, never_enqueued,"
            " message_missing, message_stranded).",
            ("queue", "reason"),
            registry=registry,
        )
        self.dispatched = Counter(
            "inferq_chunks_dispatched",
            "Chunks the dispatcher (on the worker that leads) sent to the broker, by queue and tenant.",
            ("queue", "tenant"),
            registry=registry,
        )
        self.dispatcher_leader = Gauge(
            "inferq_dispatcher_leader",
            "1 on the worker whose dispatcher leads (holds the PostgreSQL advisory lock), 0 on the others.",
            registry=registry,
            multiprocess_mode="liveall",
        )
        self.database_retries = Counter(
            "inferq_database_retries",
            "Tries again after the database was unreachable: storing a chunk's results (write), or a whole chunk"
            " retried by Celery (chunk).",
            ("operation",),
            registry=registry,
        )
        self.micro_batches = Counter(
            "inferq_micro_batches", "Forward passes that returned (micro-batches).", by_model, registry=registry
        )
        self.tokens = Counter(
            "inferq_tokens", "Real tokens in the micro-batches (padding excluded).", by_model, registry=registry
        )
        self.padded_tokens = Counter(
            "inferq_padded_tokens",
            "Token positions of the padded micro-batches (sequences × the longest); over inferq_tokens_total it is"
            " the padding factor.",
            by_model,
            registry=registry,
        )
        self.forward_seconds = Histogram(
            "inferq_forward_seconds",
            "Seconds of one forward pass (a micro-batch: padding, copies to the device and back included).",
            by_model,
            buckets=FORWARD_BUCKETS,
            registry=registry,
        )
        self.chunk_seconds = Histogram(
            "inferq_chunk_seconds",
            "Seconds a claimed chunk (with its batch-mates) took, from its claim to its stored results.",
            by_model,
            buckets=CHUNK_BUCKETS,
            registry=registry,
        )
        self.chunk_wait_seconds = Histogram(
            "inferq_chunk_wait_seconds",
            "Seconds a chunk waited between being enqueued (its job stored, or the reconciler re-enqueueing it) and"
            " its first claim.",
            ("queue",),
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self.model_load_seconds = Histogram(
            "inferq_model_load_seconds",
            "Seconds loading a model (tokenizer, weights, precision, device) took.",
            by_model,
            buckets=LOAD_BUCKETS,
            registry=registry,
        )
        self.chunks_in_progress = Gauge(
            "inferq_chunks_in_progress",
            "Chunk messages this worker's processes are running now.",
            registry=registry,
            multiprocess_mode="livesum",
        )

    # -- what the worker reports ------------------------------------------------------------------------------

    def chunk_claimed(self, claims: Sequence[ClaimLike]) -> None:
        """A chunk and its batch-mates were claimed: their wait (first claims), or a redelivery (later ones)."""
        now = dt.datetime.now(dt.UTC)
        for claim in claims:
            if claim.attempts > 1:
                self.chunks_redelivered.labels(_name(claim.task), claim.model, claim.queue or "").inc()
            elif claim.waiting_since is not None:
                since = _datetime(claim.waiting_since)
                since = since if since.tzinfo is not None else since.replace(tzinfo=dt.UTC)
                # Clocks of different machines: a chunk never waits less than nothing.
                self.chunk_wait_seconds.labels(claim.queue or "").observe(max(0.0, (now - since).total_seconds()))

    def chunk_stored(self, claims: Sequence[ClaimLike], stored: Sequence[StoredLike], seconds: float) -> None:
        """A claimed batch ran and its results were stored: its items by outcome, and its time."""
        lead = claims[0]
        task, queue = _name(lead.task), lead.queue or ""
        succeeded = sum(s.succeeded for s in stored)
        failed = sum(s.failed for s in stored)
        if succeeded:
            self.items.labels(task, lead.model, queue, "succeeded").inc(succeeded)
        if failed:
            self.items.labels(task, lead.model, queue, "failed").inc(failed)
        self.chunk_seconds.labels(task, lead.model).observe(seconds)

    def chunk_exhausted(self, claim: ClaimLike) -> None:
        self.chunks_exhausted.labels(_name(claim.task), claim.model, claim.queue or "").inc()

    def chunk_delivered(self, outcome: Any) -> None:
        self.chunk_deliveries.labels(_name(outcome)).inc()

    def chunks_requeued(self, chunks: Iterable[Any]) -> None:
        """Chunks the reconciler re-enqueued (`inferq.recovery.LostChunk`: ``queue``, ``reason``)."""
        for chunk in chunks:
            self.requeued.labels(chunk.queue, chunk.reason).inc()

    def chunks_dispatched(self, sent: Iterable[tuple[str, str, int, str]]) -> None:
        """Chunks the dispatcher sent: (queue, job id, seq, tenant) each."""
        for queue, _, _, tenant in sent:
            self.dispatched.labels(queue, tenant).inc()

    def database_retry(self, operation: str) -> None:
        self.database_retries.labels(operation).inc()

    def model_loaded(self, task: Any, model: str, seconds: float) -> None:
        self.model_load_seconds.labels(_name(task), model).observe(seconds)

    def timed_forward(
        self, task: Any, model: str, forward: Callable[[F], Any], collect: Callable[[Any], Any]
    ) -> tuple[Callable[[F], Any], Callable[[Any], Any]]:
        """``forward`` (launching one micro-batch) and ``collect`` (bringing its outputs back, waiting for the
        device), as `worker.engines.batching.run_batches` calls them, timed together into ``inferq_forward_seconds``:
        one observation per micro-batch, its launch plus its collection (on a CPU the launch computes it; on an
        accelerator the collection waits for it). A pass that raises is not timed."""
        histogram = self.forward_seconds.labels(_name(task), model)
        clock = time.perf_counter

        def timed_forward(rows: F) -> Any:
            started = clock()
            launched = forward(rows)
            return launched, clock() - started

        def timed_collect(timed: Any) -> Any:
            launched, launch_seconds = timed
            started = clock()
            out = collect(launched)
            histogram.observe(launch_seconds + clock() - started)
            return out

        return timed_forward, timed_collect

    def micro_batches_ran(self, task: Any, model: str, lengths: np.ndarray, batches: Sequence[Any]) -> None:
        """The micro-batches that ran (``(rows, outputs)`` pairs; ``lengths`` per feature): their count, and
        their real and padded tokens, in a few numpy calls for all of them."""
        if not batches:
            return
        import numpy as np

        sizes = np.fromiter((len(rows) for rows, _ in batches), dtype=np.int64, count=len(batches))
        ran = lengths[np.concatenate([rows for rows, _ in batches])]
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        longest = np.maximum.reduceat(ran, starts)
        labels = (_name(task), model)
        self.micro_batches.labels(*labels).inc(len(batches))
        self.tokens.labels(*labels).inc(int(ran.sum()))
        self.padded_tokens.labels(*labels).inc(int((longest * sizes).sum()))


#: Every metric a worker's endpoint exports (the dashboard's queries are checked against this list), without the
#: suffixes Prometheus adds (``_total``; ``_bucket``, ``_sum``, ``_count``).
WORKER_METRICS = (
    "inferq_items_total",
    "inferq_chunk_deliveries_total",
    "inferq_chunks_redelivered_total",
    "inferq_chunks_exhausted_total",
    "inferq_chunks_requeued_total",
    "inferq_chunks_dispatched_total",
    "inferq_dispatcher_leader",
    "inferq_database_retries_total",
    "inferq_micro_batches_total",
    "inferq_tokens_total",
    "inferq_padded_tokens_total",
    "inferq_forward_seconds",
    "inferq_chunk_seconds",
    "inferq_chunk_wait_seconds",
    "inferq_model_load_seconds",
    "inferq_chunks_in_progress",
)

#: What `StateCollector` exports.
STATE_METRICS = (
    "inferq_jobs",
    "inferq_unfinished_items",
    "inferq_oldest_queued_chunk_age_seconds",
    "inferq_webhook_deliveries",
    "inferq_dispatcher_last_round_age_seconds",
    "inferq_dispatch_chunks",
    "inferq_dispatch_window",
    "inferq_state_up",
)


# -- this process's metrics: what the worker's code calls ----------------------------------------------------------

#: This process's metrics; ``None`` while they are off (every call below then returns at once).
_active: WorkerMetrics | None = None


def active() -> WorkerMetrics | None:
    return _active


def activate(metrics: WorkerMetrics | None) -> None:
    """Turn this process's metrics on (``None``: off). A prefork child inherits its parent's."""
    global _active
    _active = metrics


def chunk_claimed(claims: Sequence[ClaimLike]) -> None:
    if _active is not None:
        _active.chunk_claimed(claims)


def chunk_stored(claims: Sequence[ClaimLike], stored: Sequence[StoredLike], seconds: float) -> None:
    if _active is not None:
        _active.chunk_stored(claims, stored, seconds)


def chunk_exhausted(claim: ClaimLike) -> None:
    if _active is not None:
        _active.chunk_exhausted(claim)


def chunk_delivered(outcome: Any) -> None:
    if _active is not None:
        _active.chunk_delivered(outcome)


def chunks_requeued(chunks: Iterable[Any]) -> None:
    if _active is not None:
        _active.chunks_requeued(chunks)


def chunks_dispatched(sent: Iterable[tuple[str, str, int, str]]) -> None:
    if _active is not None:
        _active.chunks_dispatched(sent)


def dispatcher_leads(leads: bool) -> None:
    """Whether this worker's dispatcher leads now (``inferq_dispatcher_leader``)."""
    if _active is not None:
        _active.dispatcher_leader.set(1 if leads else 0)


def database_retry(operation: str) -> None:
    if _active is not None:
        _active.database_retry(operation)


def model_loaded(task: Any, model: str, seconds: float) -> None:
    if _active is not None:
        _active.model_loaded(task, model, seconds)


class chunk_in_progress:
    """``with chunk_in_progress():`` around a chunk message's run: ``inferq_chunks_in_progress``."""

    def __enter__(self) -> None:
        if _active is not None:
            _active.chunks_in_progress.inc()

    def __exit__(self, *exc: object) -> None:
        if _active is not None:
            _active.chunks_in_progress.dec()


# -- multiprocess mode and the endpoint ----------------------------------------------------------------------------


def prepare_multiprocess() -> Path:
    """In a worker's main process, before its pool forks: a fresh directory for every process's metric files, in
    ``PROMETHEUS_MULTIPROC_DIR`` (a directory left by an earlier run would add its counts to this one's)."""
    path = Path(tempfile.mkdtemp(prefix="inferq-metrics-"))
    os.environ[MULTIPROC_ENV] = str(path)
    from prometheus_client import values

    # prometheus-client picks its value class when it is first imported: imported before the variable was set,
    # it would keep values in memory, where a pool process's counts never reach the main process.
    if not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.MultiProcessValue()
    return path


def process_exited(pid: int) -> None:
    """A pool process ends: its share of the live gauges goes (its counters stay)."""
    path = os.environ.get(MULTIPROC_ENV)
    if _active is not None and path:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, path)


def _forget_dead_processes(path: Path) -> None:
    """Processes killed without a goodbye (SIGKILL, out of memory) leave live-gauge files: drop them."""
    from prometheus_client import multiprocess

    for file in path.glob("gauge_live*_*.db"):
        try:
            pid = int(file.stem.rsplit("_", 1)[1])
        except ValueError:
            continue
        if not _alive(pid):
            multiprocess.mark_process_dead(pid, str(path))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StateCollector:
    """The system's state from SQL, on a scrape, reused for ``cache_seconds``: ``inferq_jobs{state}``,
    ``inferq_unfinished_items{queue,model}``, ``inferq_oldest_queued_chunk_age_seconds{queue}``,
    ``inferq_webhook_deliveries{state}``, the dispatcher's ``inferq_dispatcher_last_round_age_seconds``,
    ``inferq_dispatch_chunks{queue,state}`` and ``inferq_dispatch_window{queue}``, and ``inferq_state_up`` (0 when the last read failed; the other families are then left out)."""

    def __init__(self, sessions: sessionmaker[Session], cache_seconds: float) -> None:
        self.sessions = sessions
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._read_at = -float("inf")
        self._state: _State | None = None
        #: Times the database was read (for tests and for the curious).
        self.reads = 0

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        state = self.state()
        up = GaugeMetricFamily("inferq_state_up", "Whether the last read of the state from SQL succeeded.")
        up.add_metric([], 1.0 if state is not None else 0.0)
        yield up
        if state is None:
            return
        jobs = GaugeMetricFamily("inferq_jobs", "Jobs in the database, by state.", labels=["state"])
        for name, count in state.jobs.items():
            jobs.add_metric([name], count)
        yield jobs
        items = GaugeMetricFamily(
            "inferq_unfinished_items",
            "Items of queued and running jobs that have not ended yet, by the jobs' queue and model.",
            labels=["queue", "model"],
        )
        for (queue, model), count in sorted(state.unfinished.items()):
            items.add_metric([queue, model], count)
        yield items
        age = GaugeMetricFamily(
            "inferq_oldest_queued_chunk_age_seconds",
            "Seconds since the oldest queued chunk of an unfinished job was enqueued, by queue (0: none queued).",
            labels=["queue"],
        )
        now = time.time()
        for queue, oldest in sorted(state.oldest.items()):
            age.add_metric([queue], 0.0 if oldest is None else max(0.0, now - oldest))
        yield age
        deliveries = GaugeMetricFamily(
            "inferq_webhook_deliveries",
            "Webhook deliveries in the database, by state (pending, delivered, failed). Workers send them; the"
            " table is their record, so every process that reads it shows the same numbers.",
            labels=["state"],
        )
        for name, count in state.deliveries.items():
            deliveries.add_metric([name], count)
        yield deliveries
        yield from self._dispatcher(state, now)

    @staticmethod
    def _dispatcher(state: _State, now: float) -> Iterator[Metric]:
        """The dispatcher's row (`inferq.schema.DispatcherRound`): how old its last round is (absent: no leader
        wrote one), and while it is not stale its queues' chunks by state and their window."""
        from prometheus_client.core import GaugeMetricFamily

        from inferq.constants import DISPATCH_STATE_STALE_SECONDS

        age = GaugeMetricFamily(
            "inferq_dispatcher_last_round_age_seconds",
            "Seconds since the dispatcher's leader last recorded a round (absent: none leads, or none ever did;"
            f" over {DISPATCH_STATE_STALE_SECONDS:g}: the leader is gone).",
        )
        chunks = GaugeMetricFamily(
            "inferq_dispatch_chunks",
            "The dispatcher's chunks after its last round, by queue and state: waiting (released, for a worker),"
            " running, held (in SQL, not released) and held_by_cap (of those, tenants' at their cap).",
            labels=["queue", "state"],
        )
        window = GaugeMetricFamily(
            "inferq_dispatch_window", "Most released chunks waiting for a worker, by queue.", labels=["queue"]
        )
        if state.dispatcher is not None:
            last_round, queues = state.dispatcher
            seconds = max(0.0, now - last_round)
            age.add_metric([], seconds)
            if seconds <= DISPATCH_STATE_STALE_SECONDS:
                for queue, counts in sorted(queues.items()):
                    for name in ("waiting", "running", "held", "held_by_cap"):
                        chunks.add_metric([queue, name], float(counts.get(name, 0)))
                    window.add_metric([queue], float(counts.get("window", 0)))
        yield age
        yield chunks
        yield window

    def state(self) -> _State | None:
        """The state, read again once ``cache_seconds`` have passed since the last read (failed or not)."""
        with self._lock:
            if time.monotonic() - self._read_at >= self.cache_seconds:
                self._state = self._read()
                self._read_at = time.monotonic()
                self.reads += 1
            return self._state

    def _read(self) -> _State | None:
        from sqlalchemy.exc import SQLAlchemyError

        from inferq.errors import DatabaseUnavailable
        from inferq.schema import as_utc
        from inferq.states import DeliveryState, JobState
        from inferq.store import dispatch, maintenance

        try:
            with self.sessions() as session:
                jobs = {s.value: 0 for s in JobState}
                for by_state in maintenance.jobs_by_state(session):
                    jobs[_name(by_state.state)] = int(by_state.total)
                unfinished: dict[tuple[str, str], int] = {}
                for left in maintenance.items_left(session):
                    unfinished[(left.queue, left.model)] = int(left.left or 0)
                oldest: dict[str, float | None] = dict.fromkeys({q for q, _ in unfinished})
                for waiting in maintenance.oldest_waiting(session):
                    since = waiting.since
                    oldest[waiting.queue] = as_utc(_datetime(since)).timestamp() if since is not None else None
                deliveries = {s.value: 0 for s in DeliveryState}
                for delivery_state in maintenance.deliveries_by_state(session):
                    deliveries[_name(delivery_state.state)] = int(delivery_state.total)
                row, _ = dispatch.last_round(session)
                dispatcher = None if row is None else (as_utc(row.last_round).timestamp(), dict(row.queues))
        except (DatabaseUnavailable, SQLAlchemyError) as exc:
            log.warning("metrics: could not read the state from SQL: %s", exc)
            return None
        return _State(jobs, unfinished, oldest, deliveries, dispatcher)


def _datetime(value: Any) -> dt.datetime:
    """SQLite may hand a computed timestamp back as text."""
    return value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))


class _State:
    def __init__(
        self,
        jobs: dict[str, int],
        unfinished: dict[tuple[str, str], int],
        oldest: dict[str, float | None],
        deliveries: dict[str, int],
        dispatcher: tuple[float, dict[str, Any]] | None = None,
    ) -> None:
        self.jobs = jobs
        self.unfinished = unfinished
        self.oldest = oldest
        self.deliveries = deliveries
        #: The dispatcher's row: its last round (a Unix time) and its queues; ``None``: no row.
        self.dispatcher = dispatcher


class MetricsServer:
    """A worker's ``/metrics`` endpoint, in its main process: every process's files added up, and the state from
    SQL. `start` after the pool has forked; `forget` in a process forked later; `stop` at shutdown (the files go
    too)."""

    def __init__(self, settings: Settings, path: Path) -> None:
        self.settings = settings
        self.path = path
        self._engine: Engine | None = None
        self._server: Any = None

    def start(self) -> None:
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.multiprocess import MultiProcessCollector

        from inferq.db import make_engine, make_sessionmaker

        assert self.settings.metrics_port is not None
        registry = CollectorRegistry()
        path = self.path

        class Processes(MultiProcessCollector):
            def collect(self) -> Iterable[Metric]:
                _forget_dead_processes(path)
                return super().collect()

        Processes(registry, path=str(path))
        self._engine = make_engine(self.settings)
        registry.register(
            StateCollector(make_sessionmaker(self._engine, read_only=True), self.settings.metrics_cache_seconds)
        )
        self._server, _ = start_http_server(self.settings.metrics_port, self.settings.metrics_host, registry)
        log.info("metrics on http://%s:%s/metrics", self.settings.metrics_host, self.settings.metrics_port)

    def forget(self) -> None:
        """In a process forked from the main one: the endpoint and its connections stay the main process's."""
        if self._engine is not None:
            self._engine.dispose(close=False)
        self._engine = self._server = None

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._engine is not None:
            self._engine.dispose()
        self._engine = self._server = None
        shutil.rmtree(self.path, ignore_errors=True)
