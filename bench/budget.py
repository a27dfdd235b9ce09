"""The per-item CPU budget (``python -m bench --tasks budget``, part of ``all``): what the whole system costs the
machine an item beyond what a hand-written in-process loop over the same items costs.

Real workers (``inferq worker``: one process, ``--pool prefork --concurrency 1``, unless said) on a private PostgreSQL
database and Redis queue, one job of `BUDGET_CHUNKS` chunks of `BUDGET_CHUNK` classification items:

* the null device (`bench.simulated_worker`, no forward time: the control plane alone), against the engine
  in-process on the null device, chunk by chunk (tokenize, plan, postprocess: what the system cannot do without);
  the null device's system also runs on the other pools a fast device may get (`NULL_POOLS`: one process of
  three threads, an accelerator's default; one process per core), and the ratio's target is checked on one
  process per core, the pool that spends the machine's cores as the engine in-process does (its tokenizer
  spreads each chunk over every core; each pool process's tokenizer takes one core, `worker.threads`), the others
  shown beside it;
* a tiny real model (`TINY_MODEL`: DistilBERT of 2 layers, width 32, random weights; a fast device's stand-in),
  against a hand-written loop a user would write (`hand_written_loop`: the fast tokenizer, the model under
  ``torch.inference_mode()``, softmax and argmax, in batches of `LOOP_BATCH` in input order), and against the
  worker's engine in-process (its length-sorted micro-batches: the loop's work done as the worker does it, so the
  difference is the control plane alone: broker, claim, read, write, commit, PostgreSQL, Redis); all on
  `TORCH_THREADS` torch threads.

CPU is read from ``/proc/<pid>/stat`` (user + system time, every thread) by `CpuTracker`, sampled while the job
runs so that a process that ends meanwhile keeps what it spent: the worker (its main process and pool children),
the PostgreSQL backends serving the benchmark's database (their process title names it) and PostgreSQL's own
background processes (checkpointer, WAL writer: shared by every database of the server, counted since this job's
writes drive them), Redis (the server process: shared, counted whole), and the producer's submission (its thread's
CPU time). Time burnt waiting (spinning thread pools, polling) is CPU time and is counted. The loops' CPU is this
process's (`time.process_time`: every thread). The benchmark's own status polls are not counted: their
PostgreSQL side is (a few statements a second).

The overhead an item is the system's CPU an item less the loop's (the issue's definition: less the hand-written
loop's; and, stricter, less the engine in-process's); the targets: at most `OVERHEAD_TARGET_US`, the
system at least `SYSTEM_OVER_LOOP` × the loop's items/s on the tiny model, and the null-device system at least
`bench.simulated.CEILING_OVER_ENGINE` × the engine in-process. Where the machine is shared with other load, the
servers' CPU includes some of it: the figures are an upper bound of the system's own.

Per stage, each chunk's log line (`worker.stages`) gives the system's wall time per stage; the loops time theirs
(tokenize, forward, postprocess): the table shows both an item."""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.measure import _cpu_ticks, _proc_tree
from bench.models import BenchModel
from bench.report import Target
from bench.simulated import CEILING_OVER_ENGINE, chunk_stages, simulated_worker_program
from bench.system import Services, client_settings, private_services, worker_env
from inferq.task_specs import TaskName
from producer.client import Client
from worker.process import WORKER_PROGRAM, running_worker
from worker.stages import STAGES
from worker.threads import DEVICE_POOL_THREADS

log = logging.getLogger("bench")

#: The issue's targets: CPU overhead an item at chunks of `BUDGET_CHUNK` (µs), and the system over the hand-written
#: loop on a fast model (items/s).
OVERHEAD_TARGET_US = 40.0
SYSTEM_OVER_LOOP = 1.0

#: Chunk size of the budget (the issue's), and chunks a job: 20,480 items, the issue's job.
BUDGET_CHUNK = 1024
BUDGET_CHUNKS = 20

#: Batch size of the hand-written loop (the pipeline's usual 32).
LOOP_BATCH = 32

#: torch's intra-op threads in the worker (``INFERQ_TORCH_THREADS``) and in the hand-written loop: the same on both
#: sides, so that their difference is the control plane. One: a tiny model's matrices are too small to split, and
#: on a loaded 2-core machine two OpenMP threads spin at their barriers while the other is descheduled (the loop
#: over 1,024 items took 1.8 s of wall and 0.66 s of CPU at one thread, 16.7 s and 5.3 s at two).
TORCH_THREADS = 1

#: The tiny real model (`ensure_tiny_model`): built once under the models directory.
TINY_MODEL = "bench-tiny-cls"
TINY_RECIPE: dict[str, Any] = {
    "version": 2,
    "arch": "distilbert",
    "size": "tiny",
    "vocab_size": 8000,
    "max_length": 512,
}

#: The pools the null device's system runs on (``--pool`` and ``--concurrency``), by run name: one process (the CPU
#: default, the null device's overhead target), an accelerator's default (one process, `DEVICE_POOL_THREADS` threads
#: sharing the model), and one process per core (the ratio's target, `budget_targets`).
NULL_POOLS: dict[str, tuple[str, int]] = {
    "system_null": ("prefork", 1),
    "system_null_threads": ("threads", DEVICE_POOL_THREADS),
    "system_null_cores": ("prefork", len(os.sched_getaffinity(0))),
}

#: Jobs each null-device system runs, interleaved with as many runs of the engine in-process: the medians are
#: compared (one run each swung the ratio by a fifth between two runs on a quiet machine).
NULL_REPEATS = 3

#: Seconds between two CPU samples (a scan of /proc: a few hundred small reads).
CPU_SAMPLE_SECONDS = 0.25

#: The parts `CpuTracker` counts, in the table's order.
PARTS = ("worker", "postgres", "postgres-background", "redis", "producer")

#: A backend's process title after ``postgres: `` (and the cluster's ``15/main: ``): user, database, client.
_BACKEND = re.compile(r"^(?:\S+/\S+: )?(?P<user>\S+) (?P<database>\S+) (?P<client>\S+\(\d+\)|\[local\])")


# -- which process is which (pure) ------------------------------------------------------------------------------


def system_processes(worker_pid: int, database: str, redis_port: int | None) -> dict[int, str]:
    """The processes of the system under measurement, each with its part (`part_of`): the worker's process tree,
    then the PostgreSQL and Redis processes that serve ``database`` and ``redis_port``."""
    found = {pid: "worker" for pid in _proc_tree(worker_pid)}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in found:
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            if comm not in ("postgres", "redis-server"):
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if (part := part_of(comm, cmdline, database, redis_port)) is not None:
            found[int(entry.name)] = part
    return found


def part_of(comm: str, cmdline: str, database: str, redis_port: int | None = None) -> str | None:
    """The part of the system a process (its ``comm`` and NUL-free ``cmdline``) belongs to, for the benchmark's
    ``database``: a backend of that database is ``postgres``, of another database none (other load), any other
    ``postgres`` process (postmaster, checkpointer, WAL writer…) ``postgres-background``; a ``redis-server`` is
    ``redis`` (where ``redis_port`` is given, the one whose command line ends in that port: another server is other
    load). None for anything else (the worker is found by its process tree)."""
    if comm == "redis-server":
        return "redis" if redis_port is None or cmdline.strip().endswith(f":{redis_port}") else None
    if comm != "postgres":
        return None
    title = cmdline.strip()
    if not title.startswith("postgres: "):
        return "postgres-background"  # the postmaster: its command line, not a title
    backend = _BACKEND.match(title.removeprefix("postgres: "))
    if backend is None:
        return "postgres-background"
    return "postgres" if backend["database"] == database else None


def spent(first: Mapping[int, tuple[str, int]], last: Mapping[int, tuple[str, int]]) -> dict[str, int]:
    """Ticks each part spent between two samples of (pid → (part, ticks so far)): a process absent from ``first``
    was born meanwhile (all its ticks count); a pid whose ticks went down is a new process under a reused pid."""
    out = dict.fromkeys(PARTS, 0)
    for pid, (part, ticks) in last.items():
        before = first.get(pid)
        start = before[1] if before is not None and before[0] == part and before[1] <= ticks else 0
        out[part] = out.get(part, 0) + ticks - start
    return out


def per_item_us(seconds: Mapping[str, float], items: int) -> dict[str, float]:
    """CPU seconds by part → µs an item, with ``total`` (every part)."""
    out = {k: 1e6 * v / items for k, v in seconds.items()}
    out["total"] = sum(out.values())
    return out


def overhead_us(system: Mapping[str, float], loop: Mapping[str, float]) -> float:
    """The system's CPU an item beyond the loop's (both `per_item_us`)."""
    return system["total"] - loop["total"]


# -- measuring ----------------------------------------------------------------------------------------------------


class CpuTracker:
    """Samples the CPU ticks of the worker's process tree, the PostgreSQL processes of ``database`` (and the
    server's background ones) and Redis every `CPU_SAMPLE_SECONDS`; `stop` gives the seconds each part spent since
    `start` (`spent`)."""

    def __init__(
        self, worker_pid: int, database: str, redis_port: int | None = None, every: float = CPU_SAMPLE_SECONDS
    ) -> None:
        self.worker_pid = worker_pid
        self.database = database
        self.redis_port = redis_port
        self.every = every
        self.first: dict[int, tuple[str, int]] = {}
        self.last: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-tracker", daemon=True)

    def sample(self) -> dict[int, tuple[str, int]]:
        parts = system_processes(self.worker_pid, self.database, self.redis_port)
        return {pid: (part, _cpu_ticks(pid)) for pid, part in parts.items()}

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.last.update(self.sample())

    def start(self) -> CpuTracker:
        self.first = self.sample()
        self.last = dict(self.first)
        self._thread.start()
        return self

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        self.last.update(self.sample())
        tick = os.sysconf("SC_CLK_TCK")
        return {k: v / tick for k, v in spent(self.first, self.last).items()}


@dataclass
class BudgetRun:
    """One measured run: the system's job or an in-process loop."""

    name: str
    items: int
    #: Wall seconds: the job's started_at to finished_at (the system), the loop's own.
    seconds: float
    #: CPU seconds by part (`PARTS`; a loop: ``loop``).
    cpu: dict[str, float]
    #: Wall seconds by stage, summed over the chunks.
    stages: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def items_per_second(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else float("inf")

    @property
    def cpu_us(self) -> dict[str, float]:
        return per_item_us(self.cpu, self.items)

    def stage_us(self) -> dict[str, float]:
        return {k: 1e6 * v / self.items for k, v in self.stages.items()}

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "items_per_second": self.items_per_second,
            "cpu_us_per_item": self.cpu_us,
            "stage_us_per_item": self.stage_us(),
        }


def ensure_tiny_model(root: Path) -> BenchModel:
    """`TINY_MODEL` under ``root``, built on first use (the benchmark corpus's WordPiece vocabulary)."""
    from inferq_demo.stand_ins import build_model

    path = root / TINY_MODEL
    marker = path / "bench-recipe.json"
    if not (marker.exists() and json.loads(marker.read_text()) == TINY_RECIPE):
        log.info("building %s in %s", TINY_MODEL, path)
        build_model(
            path,
            TaskName.CLASSIFICATION,
            "distilbert",
            size="tiny",
            vocab_size=int(TINY_RECIPE["vocab_size"]),
            max_length=int(TINY_RECIPE["max_length"]),
            seed=0,
        )
        marker.write_text(json.dumps(TINY_RECIPE))
    return BenchModel(TINY_MODEL, TaskName.CLASSIFICATION, path)


def system_run(
    name: str,
    services: Services,
    model: BenchModel,
    items: Sequence[dict[str, Any]],
    params: dict[str, Any],
    *,
    chunk: int,
    program: Sequence[str] = WORKER_PROGRAM,
    logs: Path,
    pool: tuple[str, int] = ("prefork", 1),
    repeats: int = 1,
    between: Callable[[], object] | None = None,
) -> BudgetRun:
    """One worker (``program``, on ``pool``), a warm-up job, then ``repeats`` jobs of ``items`` in chunks of
    ``chunk``, each under a `CpuTracker` from before its submission to the client seeing it finished; the run of the
    median speed (all speeds in its ``extra``). ``between`` runs before each job, while the worker idles (the
    engine in-process, interleaved with the systems)."""
    registry = json.dumps({model.name: {"source": str(model.path), "task": model.task.value}})
    env = {**worker_env(services, registry), "INFERQ_RECOVER_INTERVAL": "0", "INFERQ_TORCH_THREADS": str(TORCH_THREADS)}
    path = logs / f"budget-{name}.log"
    database = services.database_url.rsplit("/", 1)[1]
    args = ("--models", model.name, "--pool", pool[0], "--concurrency", str(pool[1]))
    with running_worker(env, path, *args, program=program) as proc, Client(client_settings(env)) as client:
        # A chunk for each pool process or thread at least: each loads the model before the job's clock starts.
        warm = client.submit(model.task, model.name, list(items[: 64 * pool[1]]), params, chunk_size=16)
        client.wait(warm.job_id, timeout=600, poll=0.2)
        done: list[tuple[Any, Any, dict[str, float]]] = []
        for _ in range(repeats):
            if between is not None:
                between()
            tracker = CpuTracker(proc.pid, database, redis_port(services)).start()
            try:
                submit_cpu = time.thread_time()
                job = client.submit(model.task, model.name, list(items), params, chunk_size=chunk)
                submit_cpu = time.thread_time() - submit_cpu
                status = client.wait(job.job_id, timeout=1800, poll=0.2)
            finally:
                cpu = tracker.stop()
            if status.state.value != "succeeded" or status.succeeded != len(items):
                raise RuntimeError(f"budget job {job.job_id} ({name}) ended {status.state.value}: {status}")
            cpu["producer"] = submit_cpu
            done.append((job, status, cpu))
    text = path.read_text(errors="replace")
    runs = []
    for job, status, cpu in done:
        chunks, stages = chunk_stages(text, job.job_id)
        extra = {"chunks": chunks, "job_id": job.job_id, "log": str(path)}
        runs.append(BudgetRun(name, len(items), job_seconds(status), cpu, stages, extra))
    return median_run(runs)


def median_run(runs: Sequence[BudgetRun]) -> BudgetRun:
    """Of ``runs`` (one or more of the same work), the one of the median speed (the slower middle one of an even
    count), with every run's items/s in its ``extra["items_per_second"]``."""
    ordered = sorted(runs, key=lambda run: run.items_per_second)
    chosen = ordered[(len(ordered) - 1) // 2]
    chosen.extra["items_per_second"] = [round(run.items_per_second) for run in runs]
    return chosen


def redis_port(services: Services) -> int:
    """The port of the benchmark's Redis (6379 where its URL names none)."""
    return urlsplit(services.redis_url).port or 6379


def job_seconds(status: Any) -> float:
    """A finished job's time: from its ``started_at`` (its first chunk claimed) to its ``finished_at``."""
    if status.started_at is None or status.finished_at is None:
        raise RuntimeError(f"job {status.job_id} has no start or end: {status}")
    return float((status.finished_at - status.started_at).total_seconds())


def _timed(stages: dict[str, float], cpu: dict[str, float], stage: str, mark: list[float]) -> None:
    """Add the wall and CPU time since ``mark`` ([wall, cpu]) to ``stage``; move the mark to now."""
    wall, proc = time.perf_counter(), time.process_time()
    stages[stage] = stages.get(stage, 0.0) + wall - mark[0]
    cpu[stage] = cpu.get(stage, 0.0) + proc - mark[1]
    mark[:] = [wall, proc]


def hand_written_loop(model: BenchModel, items: Sequence[dict[str, Any]], *, chunk: int) -> BudgetRun:
    """What a user would write without inferq: the fast tokenizer, the model under ``torch.inference_mode()``,
    softmax and argmax into ``{"label", "score"}``, in batches of `LOOP_BATCH` in input order, chunk by chunk, on
    `TORCH_THREADS` threads; wall and CPU (this process, every thread) per stage."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model.path)
    net = AutoModelForSequenceClassification.from_pretrained(model.path).eval()
    labels = [str(net.config.id2label[i]) for i in range(int(net.config.num_labels))]

    def batches(texts: list[str], stages: dict[str, float], cpu: dict[str, float]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        mark = [time.perf_counter(), time.process_time()]
        for at in range(0, len(texts), LOOP_BATCH):
            encoded = tokenizer(texts[at : at + LOOP_BATCH], padding=True, truncation=True, return_tensors="pt")
            _timed(stages, cpu, "tokenize", mark)
            with torch.inference_mode():
                logits = net(**encoded).logits
            _timed(stages, cpu, "forward", mark)
            scores, best = logits.softmax(-1).max(-1)
            out.extend({"label": labels[b], "score": s} for b, s in zip(best.tolist(), scores.tolist(), strict=True))
            _timed(stages, cpu, "postprocess", mark)
        return out

    texts = [str(x["text"]) for x in items]
    threads = torch.get_num_threads()
    torch.set_num_threads(TORCH_THREADS)
    try:
        batches(texts[:chunk], {}, {})  # warm up
        stages: dict[str, float] = {}
        cpu: dict[str, float] = {}
        start = time.perf_counter()
        done = 0
        for at in range(0, len(texts), chunk):
            done += len(batches(texts[at : at + chunk], stages, cpu))
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    return BudgetRun("hand-written loop", done, seconds, {"loop": sum(cpu.values())}, stages, {"cpu_by_stage": cpu})


def engine_loop(
    model: BenchModel, items: Sequence[dict[str, Any]], params: dict[str, Any], *, chunk: int, null_device: bool
) -> BudgetRun:
    """The worker's engine in-process, chunk by chunk, with each chunk's stages (`bench.simulated.engine_in_process`
    on the null device; with the model's forward on `TORCH_THREADS` threads): a worker's work without the broker,
    the claim, the read and the write."""
    import torch

    from bench.simulated_device import simulated_engine_factory
    from inferq.settings import Settings
    from inferq.task_specs import read_params
    from worker.model_cache import ModelCache
    from worker.stages import StageClock

    settings = Settings(models={model.name: {"source": str(model.path), "task": model.task.value}})
    cache = ModelCache(settings, engine_factory=simulated_engine_factory(0)) if null_device else ModelCache(settings)
    engine = cache.engine(model.name, model.task)
    typed = read_params(model.task, params)
    threads = torch.get_num_threads()
    torch.set_num_threads(TORCH_THREADS)
    try:
        engine.run(list(items[:chunk]), typed)  # warm up
        stages: dict[str, float] = {}
        start, cpu = time.perf_counter(), time.process_time()
        for at in range(0, len(items), chunk):
            clock = StageClock()
            engine.run(list(items[at : at + chunk]), typed, clock=clock)
            for k, v in clock.seconds.items():
                if v:
                    stages[k] = stages.get(k, 0.0) + v
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        torch.set_num_threads(threads)
    name = "engine in-process, null device" if null_device else "engine in-process"
    return BudgetRun(name, len(items), seconds, {"loop": cpu}, stages)


def bench_budget(
    model: BenchModel,
    items: Sequence[dict[str, Any]],
    params: dict[str, Any],
    *,
    chunk: int = BUDGET_CHUNK,
    services: Callable[[], AbstractContextManager[Services]] = private_services,
) -> dict[str, Any]:
    """The four runs (system and loop, null device and ``model``, a small classifier: `ensure_tiny_model`) on
    ``items``; their figures (`budget_table`, `budget_targets`)."""
    logs = Path(tempfile.mkdtemp(prefix="inferq-bench-budget-"))
    # The null device's systems run `NULL_REPEATS` jobs each, the engine in-process on the null device once before
    # each of them (the worker idle meanwhile) and once after: medians of runs interleaved in time, so that a
    # moment when the machine runs slower weighs on both sides of the ratio alike.
    engines: list[BudgetRun] = []

    def engine_between() -> None:
        engines.append(engine_loop(model, items, params, chunk=chunk, null_device=True))

    with services() as svc:
        pooled = {}
        for key, pool in NULL_POOLS.items():
            pooled[key] = system_run(
                "null" if key == "system_null" else f"null, {pool_label(*pool)}",
                svc,
                model,
                items,
                params,
                chunk=chunk,
                program=simulated_worker_program(0),
                logs=logs,
                pool=pool,
                repeats=NULL_REPEATS,
                between=engine_between,
            )
            log.info("  budget %s", _short(pooled[key]))
        tiny = system_run("tiny", svc, model, items, params, chunk=chunk, logs=logs)
        log.info("  budget %s", _short(tiny))
    engine_between()
    engine = median_run(engines)
    log.info("  budget %s", _short(engine))
    engine_tiny = engine_loop(model, items, params, chunk=chunk, null_device=False)
    log.info("  budget %s", _short(engine_tiny))
    loop = hand_written_loop(model, items, chunk=chunk)
    log.info("  budget %s", _short(loop))
    return {
        "model": model.name,
        "chunk_size": chunk,
        "items": len(items),
        "torch_threads": TORCH_THREADS,
        "runs": {
            **{key: run.to_json() for key, run in pooled.items()},
            "engine_null": engine.to_json(),
            "engine_tiny": engine_tiny.to_json(),
            "system_tiny": tiny.to_json(),
            "loop_tiny": loop.to_json(),
        },
        "worker_logs": str(logs),
        "_runs": {
            **pooled,
            "engine_null": engine,
            "system_tiny": tiny,
            "engine_tiny": engine_tiny,
            "loop_tiny": loop,
        },
    }


def pool_label(kind: str, concurrency: int) -> str:
    """A pool in words: ``1 process, 3 threads``, ``2 processes``."""
    if kind == "threads":
        return f"1 process, {concurrency} threads"
    return f"{concurrency} process{'es' if concurrency > 1 else ''}"


def _short(run: BudgetRun) -> str:
    return f"{run.name}: {run.items_per_second:,.0f} items/s, {run.cpu_us['total']:,.0f} µs CPU an item"


# -- report ---------------------------------------------------------------------------------------------------------


def budget_targets(result: Mapping[str, Any]) -> list[Target]:
    """The overhead an item against `OVERHEAD_TARGET_US` (tiny model: less the hand-written loop, less the engine
    in-process where measured; null device: less the engine in-process), the system over the loop on the tiny
    model, the null-device system over the engine in-process."""
    runs: dict[str, BudgetRun] = result["_runs"]
    chunk = result["chunk_size"]
    null, engine, tiny, loop = (runs[k] for k in ("system_null", "engine_null", "system_tiny", "loop_tiny"))
    pairs = [(tiny, loop, "tiny model − hand-written loop")]
    if "engine_tiny" in runs:
        pairs.append((tiny, runs["engine_tiny"], "tiny model − engine in-process"))
    pairs.append((null, engine, "null device − engine in-process"))
    out = []
    for system, base, what in pairs:
        us = system.cpu_us
        detail = f"system {us['total']:.0f} µs ({_parts(us)}), in-process {base.cpu_us['total']:.0f} µs"
        out.append(
            Target(
                f"budget: CPU overhead µs an item, {what}, chunks of {chunk}",
                overhead_us(us, base.cpu_us),
                OVERHEAD_TARGET_US,
                op="<=",
                detail=detail,
            )
        )
    out.append(
        Target(
            f"budget: system / hand-written loop (items/s), tiny model, chunks of {chunk}",
            tiny.items_per_second / loop.items_per_second,
            SYSTEM_OVER_LOOP,
            detail=f"{tiny.items_per_second:,.0f} vs {loop.items_per_second:,.0f} items/s",
        )
    )
    # The ratio on one process per core (`NULL_POOLS`), the other pools beside it; a run without it (an older
    # result) is checked on one process.
    cores = runs.get("system_null_cores", null)
    pools = [runs[k] for k in NULL_POOLS if k in runs and runs[k] is not cores]
    beside = "; ".join(f"{p.name}: {p.items_per_second / engine.items_per_second:.2f}" for p in pools)
    out.append(
        Target(
            f"budget: null-device system ({cores.name}) / engine in-process (items/s), chunks of {chunk}",
            cores.items_per_second / engine.items_per_second,
            CEILING_OVER_ENGINE,
            detail=f"{cores.items_per_second:,.0f} vs {engine.items_per_second:,.0f} items/s"
            + (f"; other pools, {beside}" if beside else ""),
        )
    )
    return out


def _parts(us: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {v:.0f}" for k, v in us.items() if k != "total" and v)


def budget_table(result: Mapping[str, Any]) -> str:
    """µs of CPU an item by part, then µs of wall time an item by stage, for each run."""
    runs: dict[str, BudgetRun] = result["_runs"]
    parts = [*PARTS, "loop", "total"]
    lines = [f"{'CPU µs an item':<34}" + "".join(f"{p[:10]:>11}" for p in parts) + f"{'items/s':>10}"]
    for run in runs.values():
        us = run.cpu_us
        cells = "".join(f"{us[p]:11.1f}" if p in us else f"{'':>11}" for p in parts)
        lines.append(f"{run.name[:34]:<34}{cells}{run.items_per_second:10,.0f}")
    stages = [*STAGES, "other"]
    lines.append(f"{'wall µs an item, by stage':<34}" + "".join(f"{s[:10]:>11}" for s in stages))
    lines.extend(_stage_line(run.name, run.stage_us(), stages) for run in runs.values())
    return "\n".join(lines)


def _stage_line(name: str, us: Mapping[str, float], stages: Iterable[str]) -> str:
    return f"{name[:34]:<34}" + "".join(f"{us[s]:11.1f}" if s in us else f"{'':>11}" for s in stages)
