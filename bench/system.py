"""The whole system: a private PostgreSQL database (migrated), private Redis queues, one real ``inferq worker``
process, jobs submitted through `producer.Client` and waited for until done; stored vectors read back, measured
in bytes, and exported as NPY."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np
from sqlalchemy import and_, func, select, text

from bench.measure import RSS_SAMPLE_SECONDS, RssSampler, mib, tree_cpu_seconds, tree_rss_bytes, vector_of
from inferq import constants
from inferq.schema import Item, Job, Result, utcnow
from inferq.settings import Settings
from inferq.states import FINISHED_JOB_STATES, JobState
from inferq.task_specs import TaskName
from producer.client import Client

if TYPE_CHECKING:
    from bench.models import BenchModel

log = logging.getLogger(__name__)

#: PostgreSQL server and database the benchmark creates its private database from (as the tests do).
PG_ADMIN_URL = os.environ.get("INFERQ_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("INFERQ_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

#: Seconds between two status reads while waiting: the client's default. A job's time is taken from its own
#: ``finished_at`` (written by the worker), so the poll interval does not round it; polling faster would take
#: CPU from the worker on a small machine (at 50 polls a second, 2 cores: chunks ran up to 10% slower).
POLL_SECONDS = constants.DEFAULT_POLL_SECONDS


class ServicesUnavailable(Exception):
    """PostgreSQL or Redis is not reachable: the system part of the benchmark is skipped."""


@dataclass(frozen=True)
class Services:
    database_url: str
    redis_url: str
    #: The queue the benchmark's worker consumes.
    queue: str
    #: A queue no worker consumes: jobs for the submission/export scale runs, which must never run.
    cold_queue: str


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), timeout=2):
            return True
    except OSError:
        return False


@contextmanager
def private_services(pg_admin_url: str = PG_ADMIN_URL, redis_url: str = REDIS_URL) -> Iterator[Services]:
    """A new PostgreSQL database, migrated, and two queue names of this run's own; all removed afterwards."""
    if not _reachable(pg_admin_url, 5432):
        raise ServicesUnavailable(f"PostgreSQL is not reachable at {urlsplit(pg_admin_url).netloc}")
    if not _reachable(redis_url, 6379):
        raise ServicesUnavailable(f"Redis is not reachable at {urlsplit(redis_url).netloc}")
    import psycopg

    from inferq import migrate

    tag = uuid.uuid4().hex[:10]
    name = f"inferq_bench_{tag}"
    try:
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        raise ServicesUnavailable(f"PostgreSQL refused a connection: {exc}") from exc
    base, _, _ = pg_admin_url.rpartition("/")
    services = Services(f"{base}/{name}", redis_url, f"inferq-bench-{tag}", f"inferq-bench-{tag}-cold")
    try:
        migrate.upgrade(Settings(database_url=services.database_url))
        yield services
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        _drop_queues(redis_url, [services.queue, services.cold_queue])


def _drop_queues(redis_url: str, queues: Sequence[str]) -> None:
    import redis

    r = redis.Redis.from_url(redis_url)
    try:
        for q in queues:
            # The queue's list (and priority lists), and kombu's binding sets (``_kombu.binding.Q``, and
            # ``_kombu.binding_permanent.Q`` in kombu 5.6+).
            keys = [*r.scan_iter(match=f"{q}*"), *r.scan_iter(match=f"_kombu.binding*.{q}*")]
            if keys:
                r.delete(*keys)
    finally:
        r.close()


def worker_env(services: Services, models_json: str) -> dict[str, str]:
    return {
        "INFERQ_DATABASE_URL": services.database_url,
        "INFERQ_BROKER_URL": services.redis_url,
        "INFERQ_MODELS": models_json,
        "INFERQ_DEFAULT_QUEUE": services.queue,
        "INFERQ_LOG_LEVEL": "INFO",
    }


def client_settings(env: dict[str, str]) -> Settings:
    import json

    return Settings(
        database_url=env["INFERQ_DATABASE_URL"],
        broker_url=env["INFERQ_BROKER_URL"],
        models=json.loads(env["INFERQ_MODELS"]),
        default_queue=env["INFERQ_DEFAULT_QUEUE"],
    )


def services_for(stack: ExitStack, model: BenchModel) -> tuple[Services, dict[str, Any]] | str:
    """Private services for a benchmark of ``model`` (`private_services`, entered on ``stack``) and its registry
    entries (`bench.models.registry_json` at fp32, to add to), or why there are none: PostgreSQL or Redis is not
    reachable, and the benchmark is skipped."""
    import json

    from bench.models import registry_json

    try:
        services = stack.enter_context(private_services())
    except ServicesUnavailable as exc:
        return str(exc)
    return services, json.loads(registry_json([model], ()))


def client_and_key(stack: ExitStack, env: dict[str, str], tenant: str = "bench") -> tuple[Client, str]:
    """A `Client` on the services of ``env`` (closed with ``stack``) and a new API key of ``tenant``: what each
    benchmark of the HTTP API starts from."""
    from inferq.keys import create_key

    client = stack.enter_context(Client(client_settings(env)))
    with client.sessions.begin() as session:
        key, _ = create_key(session, tenant)
    return client, key


@dataclass
class JobRun:
    job_id: str
    items: int
    #: From the call to `Client.submit` to the job's ``finished_at``.
    seconds: float
    #: Of which `Client.submit` (validate, store, enqueue).
    submit_seconds: float
    state: str
    succeeded: int
    failed: int
    peak_rss_mib: float | None = None
    #: CPU seconds the worker tree spent meanwhile.
    cpu_seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def run_job(
    client: Client,
    task: TaskName,
    model: str,
    inputs: Sequence[dict[str, Any]],
    params: dict[str, Any],
    *,
    worker_pid: int | None = None,
    chunk_size: int | None = None,
    timeout: float = 1800,
) -> JobRun:
    """Submit one job and poll its status until it is finished; sample the worker tree's RSS meanwhile."""
    sampler = RssSampler(worker_pid, RSS_SAMPLE_SECONDS) if worker_pid is not None else None
    if sampler is not None:
        sampler.__enter__()
    cpu = tree_cpu_seconds(worker_pid) if worker_pid is not None else None
    try:
        start, wall_start = time.perf_counter(), utcnow()
        sub = client.submit(task, model, list(inputs), params, chunk_size=chunk_size)
        submitted = time.perf_counter()
        status = client.wait(sub.job_id, timeout=timeout, poll=POLL_SECONDS)
        observed = time.perf_counter() - start
        finished = status.finished_at
        seconds = (finished - wall_start).total_seconds() if finished is not None else observed
        if worker_pid is not None and cpu is not None:
            # Also counts the idle worker until the poll saw the job finished: next to nothing.
            cpu = tree_cpu_seconds(worker_pid) - cpu
    finally:
        if sampler is not None:
            sampler.__exit__(None, None, None)
    return JobRun(
        sub.job_id,
        sub.total,
        seconds,
        submitted - start,
        status.state.value,
        status.succeeded,
        status.failed,
        peak_rss_mib=mib(sampler.peak) if sampler is not None else None,
        cpu_seconds=cpu,
    )


# -- memory across consecutive jobs -------------------------------------------------------------------------


def memory_across_jobs(
    client: Client,
    task: TaskName,
    model: str,
    inputs: Sequence[dict[str, Any]],
    params: dict[str, Any],
    worker_pid: int,
    jobs: int,
) -> dict[str, Any]:
    """Run ``jobs`` equal jobs one after the other; the worker tree's RSS after each and its peak during each."""
    after: list[float] = []
    peaks: list[float] = []
    for _ in range(jobs):
        run = run_job(client, task, model, inputs, params, worker_pid=worker_pid)
        if run.state != JobState.SUCCEEDED:
            raise RuntimeError(f"memory job {run.job_id} ended {run.state}")
        time.sleep(0.3)  # the worker writes, acks and returns to idle
        after.append(mib(tree_rss_bytes(worker_pid)))
        peaks.append(run.peak_rss_mib or 0.0)
    # Growth: the second half's highest reading over the first half's highest (the first job may still grow
    # caches and allocator pools legitimately).
    half = len(after) // 2
    growth = max(after[half:]) - max(after[:half]) if half else 0.0
    return {
        "jobs": jobs,
        "items_per_job": len(inputs),
        "rss_after_mib": after,
        "peak_during_mib": peaks,
        "growth_mib": growth,
        "growth_fraction": growth / max(after[:half]) if half else 0.0,
    }


# -- many small jobs ------------------------------------------------------------------------------------------


def many_small_jobs(
    client: Client,
    task: TaskName,
    model: str,
    inputs: Sequence[dict[str, Any]],
    params: dict[str, Any],
    timeout: float = 1800,
) -> dict[str, Any]:
    """One one-item job per input, all submitted at once (back to back, from this process: on a small machine
    the producer shares the CPU with the worker meanwhile), then waited for together. Times come from the
    jobs' ``finished_at``."""
    start, wall_start = time.perf_counter(), utcnow()
    ids = [client.submit(task, model, [item], params).job_id for item in inputs]
    submitted, wall_submitted = time.perf_counter(), utcnow()
    deadline = time.monotonic() + timeout
    done_when_submitted: int | None = None
    while True:
        with client.reader() as session:
            done, ok, last = session.execute(
                select(
                    func.count(Job.id).filter(Job.state.in_(FINISHED_JOB_STATES)),
                    func.count(Job.id).filter(Job.state == JobState.SUCCEEDED),
                    func.max(Job.finished_at),
                ).where(Job.id.in_(ids))
            ).one()
        if done_when_submitted is None:
            done_when_submitted = done
        if done == len(ids):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{done} of {len(ids)} small jobs finished after {timeout}s")
        time.sleep(POLL_SECONDS)
    seconds = (last - wall_start).total_seconds() if last is not None else time.perf_counter() - start
    drain = (last - wall_submitted).total_seconds() if last is not None else 0.0
    left = len(ids) - (done_when_submitted or 0)
    return {
        "jobs": len(ids),
        "seconds": seconds,
        "submit_seconds": submitted - start,
        "items_per_second": len(ids) / seconds,
        "submits_per_second": len(ids) / (submitted - start),
        # Once every job was submitted (the producer no longer shares the CPU): the worker's own rate.
        "drain_jobs": left,
        "drain_items_per_second": left / drain if left and drain > 0 else None,
        "succeeded": ok,
    }


# -- submission and query scale ---------------------------------------------------------------------------------


def submission_scale(
    client: Client, model: str, rows: Sequence[dict[str, Any]], *, status_calls: int = 200, store_rounds: int = 2
) -> dict[str, Any]:
    """Submit ``rows`` as one job (to a model on the cold queue: it never runs); store the same rows again with
    `store_job` inserting and copying, alternately, ``store_rounds`` times each (best of each reported); time
    ``status`` on the big job against a 10-item job, interleaved; export the big job (best of three) once its
    items carry results."""
    from inferq import constants
    from producer.client import store_job
    from producer.export import export_jsonl
    from producer.inputs import Limits, validate_rows

    task = TaskName.CLASSIFICATION
    params = {"top_k": 1, "function_to_apply": "default"}
    n = len(rows)
    out: dict[str, Any] = {"items": n}

    # 1. The whole of Client.submit: validate every row, store in one transaction, enqueue the chunks.
    start = time.perf_counter()
    big = client.submit(task, model, list(rows), params)
    out["submit_seconds"] = time.perf_counter() - start
    out["submit_items_per_second"] = n / out["submit_seconds"]

    # 2. The store alone, both ways, back to back on the same validated records (each commits its transaction).
    limits = Limits(max_text_chars=client.settings.max_text_chars, max_items=max(n, client.settings.max_items))
    start = time.perf_counter()
    records = validate_rows(enumerate(rows, start=1), task, limits).records
    out["validate_items_per_second"] = n / (time.perf_counter() - start)
    queue = client.settings.queue_for(model)
    stored: dict[str, str] = {}
    best: dict[str, float] = {}
    for how, copy in [("executemany", False), ("copy", True)] * store_rounds:
        job_id = uuid.uuid4().hex
        start = time.perf_counter()
        with client.sessions.begin() as session:
            store_job(session, job_id, task, model, params, records, constants.DEFAULT_CHUNK_SIZE, queue, copy=copy)
        best[how] = max(best.get(how, 0.0), n / (time.perf_counter() - start))
        stored[how] = job_id
    out["store_rounds"] = store_rounds
    out["store_executemany_items_per_second"] = best["executemany"]
    out["store_copy_items_per_second"] = best["copy"]
    out["copy_rows_equal"] = _same_items(client, stored["executemany"], stored["copy"])

    # 3. status: one primary-key read, whatever the job's size.
    small = client.submit(task, model, list(rows[:10]), params)
    times: dict[str, list[float]] = {"big": [], "small": []}
    for _ in range(status_calls):
        for key, job_id in (("big", big.job_id), ("small", small.job_id)):
            t = time.perf_counter()
            client.status(job_id)
            times[key].append(time.perf_counter() - t)
    for key, values in times.items():
        values.sort()
        out[f"status_{key}_median_ms"] = 1000 * values[len(values) // 2]
        out[f"status_{key}_p95_ms"] = 1000 * values[int(len(values) * 0.95)]

    # 4. Export: give every item a result (one INSERT, as if the job had run), then stream it out.
    give_results(client, big.job_id)
    # Best of three (each streams the whole job): one run is at the mercy of other load on a small machine.
    seconds: list[float] = []
    for _ in range(3):
        with open(os.devnull, "w", encoding="utf-8") as sink:
            start = time.perf_counter()
            with client.reader() as session:
                exported = export_jsonl(session, big.job_id, sink)
            seconds.append(time.perf_counter() - start)
    out["export_seconds"] = min(seconds)
    out["export_seconds_runs"] = seconds
    out["export_rows"] = exported
    out["export_rows_per_second"] = exported / out["export_seconds"]
    return out


def give_results(client: Client, job_id: str) -> None:
    """Give every item of a classification job a result, and end the job, as if it had run (an INSERT of its
    results and an UPDATE of the job, PostgreSQL)."""
    with client.sessions.begin() as session:
        session.execute(
            text(
                'INSERT INTO results (job_id, "index", state, label, score, finished_at, result, attempts) '
                "SELECT job_id, index, 'succeeded', CASE WHEN index % 3 = 0 THEN 'NEGATIVE' ELSE 'POSITIVE' END, "
                "0.5 + (index % 997) / 2000.0, now(), "
                "json_build_array(json_build_object('label', CASE WHEN index % 3 = 0 THEN 'NEGATIVE' "
                "ELSE 'POSITIVE' END, 'score', 0.5 + (index % 997) / 2000.0)), 1 FROM items WHERE job_id = :job"
            ),
            {"job": job_id},
        )
        session.execute(
            text("UPDATE jobs SET state = 'succeeded', succeeded = total, finished_at = now() WHERE id = :job"),
            {"job": job_id},
        )


def _same_items(client: Client, a: str, b: str) -> bool:
    """Whether two jobs hold the same items (index, id, input), compared in SQL."""
    cols = (Item.index, Item.client_id, Item.input)
    with client.reader() as session:
        rows_a = session.execute(select(*cols).where(Item.job_id == a).order_by(Item.index)).all()
        rows_b = session.execute(select(*cols).where(Item.job_id == b).order_by(Item.index)).all()
    return [tuple(r) for r in rows_a] == [tuple(r) for r in rows_b]


def scale_in_fresh_process(settings: Settings, model: str, n: int) -> dict[str, Any]:
    """`submission_scale` in a new interpreter that imports the producer side only, as ``inferq submit`` and
    ``inferq results`` do: in the benchmark's own process, with torch, transformers and a few models loaded,
    Python's cyclic garbage collector walks a heap of millions of objects and the export ran ~25% slower."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        result: dict[str, Any] = pool.apply(_scale_child, (settings.model_dump(mode="json"), model, n))
    return result


def _scale_child(settings: dict[str, Any], model: str, n: int) -> dict[str, Any]:
    from bench.inputs import scale_rows
    from inferq_demo.stand_ins import corpus

    with Client(Settings(**settings)) as client:
        return submission_scale(client, model, scale_rows(corpus(), n))


# -- stored vectors -------------------------------------------------------------------------------------------


def stored_vectors(client: Client, job_id: str) -> list[np.ndarray | None]:
    """Each item's stored vectors (float32, one row per vector), in input order, read from ``results.vector`` as
    the worker wrote them (``None`` for an item without a result)."""
    with client.reader() as session:
        rows = session.execute(
            select(Result.result, Result.vector)
            .select_from(Item)
            .outerjoin(Result, and_(Result.job_id == Item.job_id, Result.index == Item.index))
            .where(Item.job_id == job_id)
            .order_by(Item.index)
        ).all()
    return [vector_of(result, None if raw is None else bytes(raw)) for result, raw in rows]


def vector_storage(client: Client, job_id: str) -> dict[str, Any]:
    """What a job's stored vectors take in PostgreSQL, per item on average: the bytes of the vector itself
    (``octet_length``), of the ``vector`` column as stored (``pg_column_size``: with its varlena header, after
    any compression) and of the ``result`` column (the JSON that describes the vector)."""
    with client.reader() as session:
        row = session.execute(
            text(
                "SELECT count(*), avg(octet_length(vector)), avg(pg_column_size(vector)), "
                "max(pg_column_size(vector)), avg(pg_column_size(result)), min(result::text) "
                "FROM results WHERE job_id = :job AND vector IS NOT NULL"
            ),
            {"job": job_id},
        ).one()
    n, data, column, column_max, result, example = row
    return {
        "items": int(n),
        "vector_bytes": float(data or 0),
        "vector_column_bytes": float(column or 0),
        "vector_column_bytes_max": int(column_max or 0),
        "result_column_bytes": float(result or 0),
        "result_example": example,
    }


# -- NPY export of stored vectors -------------------------------------------------------------------------------

#: Chunks written per transaction when storing synthetic vectors (as a worker writes a batch and its mates).
_WRITE_CHUNKS = 16


def store_vectors_as_worker(
    client: Client, model: str, queue: str, vectors: np.ndarray, *, dtype: str = "float32"
) -> str:
    """A succeeded embedding job of ``len(vectors)`` items, one vector each, stored as a worker stores it: the job
    with `producer.client.store_job` (its items as ``inferq submit`` stores them; on a queue no worker consumes),
    then each chunk's outcomes (``{"dim", "dtype"}`` and the vector's little-endian bytes) through
    `inferq.store.chunks.write_results`, `_WRITE_CHUNKS` chunks per transaction. Returns the job's id."""
    from bench.inputs import scale_rows
    from inferq.store.chunks import Claim, write_results
    from inferq.task_specs import read_params, validate_params
    from inferq_demo.stand_ins import corpus
    from producer.client import store_job
    from producer.inputs import Limits, validate_rows
    from worker.engines.base import Outcome

    task = TaskName.EMBEDDING
    n, dim = vectors.shape
    params = validate_params(task, {"dtype": dtype})
    typed = read_params(task, params)
    limits = Limits(max_text_chars=client.settings.max_text_chars, max_items=max(n, client.settings.max_items))
    records = validate_rows(enumerate(scale_rows(corpus(), n), start=1), task, limits).records
    chunk = constants.DEFAULT_CHUNK_SIZE
    job_id = uuid.uuid4().hex
    with client.sessions.begin() as session:
        store_job(session, job_id, task, model, params, records, chunk, queue, copy=True)
    blobs = vectors.astype(np.dtype(dtype).newbyteorder("<"), copy=False)
    result = {"dim": int(dim), "dtype": dtype}
    n_chunks = -(-n // chunk)
    for first in range(0, n_chunks, _WRITE_CHUNKS):
        claims, outcomes = [], []
        for seq in range(first, min(first + _WRITE_CHUNKS, n_chunks)):
            indices = list(range(seq * chunk, min((seq + 1) * chunk, n)))
            claims.append(Claim(job_id, seq, task, model, typed, indices, [], batch_key=None, queue=queue))
            outcomes.append([Outcome(result=dict(result), vector=blobs[i].tobytes()) for i in indices])
        with client.sessions.begin() as session:
            write_results(session, claims, outcomes)
    return job_id


def npy_export_scale(client: Client, n: int, *, queue: str, dim: int = 384, runs: int = 3) -> dict[str, Any]:
    """Store ``n`` random unit vectors of ``dim`` as a worker stores them (`store_vectors_as_worker`), then export
    them with `producer.export.export_npy` (what ``inferq results JOB --format npy -o OUT.npy`` runs: the matrix
    and its rows file) ``runs`` times, best reported; the matrix read back must equal the vectors."""
    import gc
    import tempfile

    from producer.export import export_npy

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    start = time.perf_counter()
    job_id = store_vectors_as_worker(client, "bench-emb", queue, vectors)
    store_seconds = time.perf_counter() - start
    seconds: list[float] = []
    equal = True
    with tempfile.TemporaryDirectory(prefix="inferq-bench-npy-") as tmp:
        path = os.path.join(tmp, "vectors.npy")
        for _ in range(runs):
            gc.collect()
            start = time.perf_counter()
            with client.reader() as session:
                written = export_npy(session, job_id, path)
            seconds.append(time.perf_counter() - start)
            back = np.load(path)
            equal = equal and written.rows == n and bool(np.array_equal(back, vectors))
            size, rows_size = os.path.getsize(path), os.path.getsize(written.rows_path)
            del back
    best = min(seconds)
    return {
        "function": "producer.export.export_npy",
        "vectors": n,
        "dim": dim,
        "store_seconds": store_seconds,
        "seconds": best,
        "seconds_runs": seconds,
        "vectors_per_second": n / best,
        "file_bytes": size,
        "rows_file_bytes": rows_size,
        "mib_per_second": mib(size) / best,
        "equal": equal,
    }


def npy_export_in_fresh_process(settings: Settings, queue: str, n: int) -> dict[str, Any]:
    """`npy_export_scale` in a new interpreter, as ``inferq results --format npy`` runs (see
    `scale_in_fresh_process`)."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        result: dict[str, Any] = pool.apply(_npy_child, (settings.model_dump(mode="json"), queue, n))
    return result


def _npy_child(settings: dict[str, Any], queue: str, n: int) -> dict[str, Any]:
    with Client(Settings(**settings)) as client:
        return npy_export_scale(client, n, queue=queue)
