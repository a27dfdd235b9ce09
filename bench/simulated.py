"""The whole system on a simulated accelerator (``python -m bench --tasks sim``): what keeps a fast device busy.

A real ``inferq worker`` (one process; one process of three threads sharing the loaded model, the default on an
accelerator; two processes; one device for all of them) runs the benchmark's classification items on
`worker.engines.simulated` at device speeds of 2,000 and 10,000 items/s and on the null device (no time: the
control plane's ceiling); everything but the forward pass is the real thing (Redis, PostgreSQL, claim, read,
tokenize, postprocess, write, commit). Per job: items/s, the device's busy fraction (its computing time over the
job's time), and where the chunks' time went, read from the worker's log (each chunk's line ends with its
stages, `worker.stages`). Beside them, the engine in-process on the null device, chunk by chunk: tokenize and
postprocess alone, what the system's ceiling is held to.

A job's time is from its ``started_at`` (its first chunk claimed) to its ``finished_at`` (its last chunk
written), both stamped by the worker: the rate at which the system works through a queue of chunks, without the
submission of the job (which in steady state overlaps other jobs' work) and one broker delivery.

Rounds: each round starts one worker per (pool, device) in turn and runs every chunk size on it, then the
engine in-process; ratios are taken within a round, and the targets take their median over rounds."""

from __future__ import annotations

import logging
import re
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.models import BenchModel
from bench.report import Target
from inferq.task_specs import TaskName, read_params
from worker.stages import STAGES, parse_stages
from worker.threads import DEVICE_POOL_THREADS

log = logging.getLogger("bench")

#: Simulated device speeds (items/s; 0 is the null device), worker pools, chunk sizes.
DEVICES = (0, 2_000, 10_000)
CHUNK_SIZES = (256, 1024)


@dataclass(frozen=True)
class Pool:
    """How the worker runs chunks: ``inferq worker --pool KIND --concurrency N``."""

    kind: str
    concurrency: int

    @property
    def processes(self) -> int:
        return self.concurrency if self.kind == "prefork" else 1

    @property
    def label(self) -> str:
        if self.kind == "threads":
            return f"1 process, {self.concurrency} threads"
        return f"{self.concurrency} process{'es' if self.concurrency > 1 else ''}"


#: One process running one chunk at a time; one process whose threads share the loaded model (the default on an
#: accelerator: one chunk's CPU work overlaps another's forward); two processes sharing the device.
POOLS = (Pool("prefork", 1), Pool("threads", DEVICE_POOL_THREADS), Pool("prefork", 2))

#: Chunks per job (full, quick), and rounds: every job is this many chunks whatever their size (16,384 items in
#: chunks of 256, 65,536 in chunks of 1,024), so that the pipeline's filling and draining (the first chunks' CPU
#: work before the device has anything, the last ones' write after) weigh little, and the same at every chunk size,
#: as in the large jobs inferq is for. (At a fixed 16,384 items, a job of chunks of 1,024 was 16 chunks: one
#: process's three threads spent a tenth of it filling and draining.)
CHUNKS_PER_JOB = (64, 16)
ROUNDS = (3, 1)

#: The issue's targets.
#: At 2,000 items/s, one worker process: the system at least this share of the device's speed.
SLOW_DEVICE_SHARE = 0.9
#: At 10,000 items/s: at least this share of the lesser of the device's speed and the null-device ceiling.
FAST_DEVICE_SHARE = 0.9
#: The null-device ceiling at least this share of the engine in-process at the same chunk size.
CEILING_OVER_ENGINE = 0.8

#: The chunk's log line, from `worker.runner.Runner` (the process name from Celery's log prefix).
_CHUNK_LINE = re.compile(
    r"(?P<proc>ForkPoolWorker-\d+|MainProcess|ThreadPoolExecutor-[\d_]+).*job (?P<job>[0-9a-f]+) chunk (?P<seq>\d+): done,"
)

#: A gap longer than this between two chunks of one job is not overhead but a process waiting for work (the job's
#: last chunks went to its sibling).
_IDLE_GAP_SECONDS = 1.0


@dataclass
class SimRun:
    """One job on the simulated device."""

    device: int
    pool: Pool
    chunk_size: int
    round: int
    items: int
    #: From the job's started_at to its finished_at.
    seconds: float
    #: From Client.submit to finished_at.
    end_to_end_seconds: float
    chunks: int
    #: Summed over the job's chunks (seconds); ``gap`` only between chunks of this job in one process.
    stages: dict[str, float] = field(default_factory=dict)

    @property
    def items_per_second(self) -> float:
        return self.items / self.seconds

    @property
    def device_seconds(self) -> float:
        return self.stages.get("device", 0.0)

    @property
    def busy(self) -> float | None:
        """The device's computing time over the job's time (None for the null device)."""
        return self.device_seconds / self.seconds if self.device else None

    @property
    def device_items_per_second(self) -> float | None:
        """The device's own speed on these items and this plan: items over its computing time."""
        return self.items / self.device_seconds if self.device and self.device_seconds > 0 else None

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "pool": self.pool.kind,
            "concurrency": self.pool.concurrency,
            "chunk_size": self.chunk_size,
            "round": self.round,
            "items": self.items,
            "seconds": self.seconds,
            "end_to_end_seconds": self.end_to_end_seconds,
            "items_per_second": self.items_per_second,
            "device_items_per_second": self.device_items_per_second,
            "busy": self.busy,
            "chunks": self.chunks,
            "stages_seconds": self.stages,
        }


def chunk_stages(log_text: str, job_id: str) -> tuple[int, dict[str, float]]:
    """The number of a job's chunks and their stages summed, from the worker's log. A process's first chunk of
    the job has its gap dropped (before it the process was idle, or finishing another job), and so has a gap
    longer than `_IDLE_GAP_SECONDS` (a process with nothing to do)."""
    total: dict[str, float] = defaultdict(float)
    seen: set[str] = set()
    chunks = 0
    for line in log_text.splitlines():
        m = _CHUNK_LINE.search(line)
        if m is None or m["job"] != job_id:
            continue
        stages = parse_stages(line)
        if stages is None:
            continue
        chunks += 1
        if m["proc"] not in seen or stages.get("gap", 0.0) > _IDLE_GAP_SECONDS:
            stages["gap"] = 0.0
        seen.add(m["proc"])
        for k, v in stages.items():
            total[k] += v
    return chunks, dict(total)


def run_sim_job(client: Any, model: str, items: Sequence[dict[str, Any]], params: dict[str, Any], chunk: int) -> Any:
    from inferq.schema import utcnow

    wall_start = utcnow()
    job = client.submit(TaskName.CLASSIFICATION, model, list(items), params, chunk_size=chunk)
    status = client.wait(job.job_id, timeout=1800, poll=0.2)
    if status.state.value != "succeeded" or status.succeeded != len(items):
        raise RuntimeError(f"simulated-device job {job.job_id} ended {status.state.value}: {status}")
    return job.job_id, status, (status.finished_at - wall_start).total_seconds()


def engine_in_process(model: BenchModel, items: Sequence[dict[str, Any]], params: dict[str, Any], chunk: int) -> float:
    """Items/s of the engine on the null device, in this process, run chunk by chunk (tokenize, plan, postprocess:
    the CPU work of a chunk without SQL or broker)."""
    from inferq.settings import Settings
    from worker.model_cache import ModelCache

    settings = Settings(
        models={model.name: {"source": str(model.path), "task": model.task.value}}, bench_simulated_device=0
    )
    engine = ModelCache(settings).engine(model.name, model.task)
    typed = read_params(model.task, params)
    engine.run(list(items[:chunk]), typed)  # warm up
    start = time.perf_counter()
    for at in range(0, len(items), chunk):
        engine.run(list(items[at : at + chunk]), typed)
    return len(items) / (time.perf_counter() - start)


def bench_simulated(
    model: BenchModel,
    items: Sequence[dict[str, Any]],
    params: dict[str, Any],
    *,
    rounds: int,
    devices: Sequence[int] = DEVICES,
    pools: Sequence[Pool] = POOLS,
    chunk_sizes: Sequence[int] = CHUNK_SIZES,
    chunks_per_job: int | None = CHUNKS_PER_JOB[0],
) -> dict[str, Any]:
    """Every (device, pool, chunk size) job, ``rounds`` times, and the engine in-process at each chunk size. A job
    at chunk size c takes the first ``c × chunks_per_job`` of ``items`` (all of them where ``chunks_per_job`` is
    None)."""
    import json

    from bench.system import client_settings, private_services, worker_env
    from producer.client import Client
    from worker.process import running_worker

    runs: list[SimRun] = []
    engine: dict[int, list[float]] = defaultdict(list)
    logs = Path(tempfile.mkdtemp(prefix="inferq-bench-sim-"))
    with private_services() as services:
        registry = json.dumps({model.name: {"source": str(model.path), "task": model.task.value}})
        for r in range(rounds):
            for pool in pools:
                for device in devices:
                    env = {
                        **worker_env(services, registry),
                        "INFERQ_BENCH_SIMULATED_DEVICE": str(device),
                        "INFERQ_RECOVER_INTERVAL": "0",
                    }
                    path = logs / f"worker-r{r}-{pool.kind}{pool.concurrency}-d{device}.log"
                    args = ("--models", model.name, "--pool", pool.kind, "--concurrency", str(pool.concurrency))
                    with running_worker(env, path, *args), Client(client_settings(env)) as client:
                        # Ready is said before the pool processes have loaded the model: one small job each.
                        run_sim_job(client, model.name, items[: 8 * pool.concurrency], params, 4)
                        for chunk in chunk_sizes:
                            job = job_items(items, chunk, chunks_per_job)
                            job_id, status, e2e = run_sim_job(client, model.name, job, params, chunk)
                            seconds = (status.finished_at - status.started_at).total_seconds()
                            n_chunks, stages = chunk_stages(path.read_text(errors="replace"), job_id)
                            run = SimRun(device, pool, chunk, r, len(job), seconds, e2e, n_chunks, stages)
                            runs.append(run)
                            log.info("  sim %s", _short(run))
            for chunk in chunk_sizes:
                engine[chunk].append(engine_in_process(model, job_items(items, chunk, chunks_per_job), params, chunk))
                log.info("  sim engine in-process, null device, chunks of %d: %.0f items/s", chunk, engine[chunk][-1])
    return {
        "items": {str(c): len(job_items(items, c, chunks_per_job)) for c in chunk_sizes},
        "chunks_per_job": chunks_per_job,
        "rounds": rounds,
        "devices": list(devices),
        "pools": [p.label for p in pools],
        "chunk_sizes": list(chunk_sizes),
        "runs": [x.to_json() for x in runs],
        "engine_in_process_items_per_second": {str(c): v for c, v in engine.items()},
        "worker_logs": str(logs),
        "_runs": runs,
        "_engine": dict(engine),
    }


def job_items(items: Sequence[dict[str, Any]], chunk: int, chunks_per_job: int | None) -> Sequence[dict[str, Any]]:
    """A simulated job's items at chunk size ``chunk``: ``chunks_per_job`` chunks' worth (all where None)."""
    if chunks_per_job is None:
        return items
    if len(items) < chunk * chunks_per_job:
        raise ValueError(f"{len(items)} items do not make {chunks_per_job} chunks of {chunk}")
    return items[: chunk * chunks_per_job]


def _device_name(device: int) -> str:
    return "null device" if device == 0 else f"{device:,} items/s device"


def _short(run: SimRun) -> str:
    busy = f", device busy {run.busy:.0%} (device alone {run.device_items_per_second:,.0f}/s)" if run.device else ""
    return (
        f"{_device_name(run.device)}, {run.pool.label}, chunks of {run.chunk_size}: "
        f"{run.items_per_second:,.0f} items/s{busy}"
    )


# -- report ---------------------------------------------------------------------------------------------------


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _spread(xs: list[float], fmt: str = "{:.2f}") -> str:
    return "rounds " + ", ".join(fmt.format(x) for x in xs)


def breakdown_table(runs: list[SimRun]) -> str:
    """Per variant: items/s (median and range over rounds), busy fraction, and the mean ms per chunk of each
    stage (over every round's chunks) with its share of the chunks' summed time."""
    groups: dict[tuple[int, Pool, int], list[SimRun]] = defaultdict(list)
    for x in runs:
        groups[(x.device, x.pool, x.chunk_size)].append(x)
    names = [*STAGES, "other"]
    head = f"{'device':>7} {'pool':>10} {'chunk':>5} {'items/s (min-max)':>22} {'busy':>5} " + " ".join(
        f"{n[:7]:>7}" for n in names
    )
    lines = [head, " " * 57 + "mean ms per chunk (share of the chunk's time, gap included)"]
    order = {p: i for i, p in enumerate(POOLS)}
    for (device, pool, chunk), xs in sorted(groups.items(), key=lambda g: (g[0][0], order.get(g[0][1], 9), g[0][2])):
        rates = sorted(x.items_per_second for x in xs)
        busy = [x.busy for x in xs if x.busy is not None]
        chunks = sum(x.chunks for x in xs)
        summed = {n: sum(x.stages.get(n, 0.0) for x in xs) for n in names}
        total = sum(summed.values()) or 1.0
        cells = " ".join(f"{1000 * summed[n] / max(chunks, 1):7.1f}" for n in names)
        shares = " ".join(f"{summed[n] / total:7.0%}" for n in names)
        dev = "null" if device == 0 else f"{device:,}"
        rate = f"{_median(rates):,.0f} ({rates[0]:,.0f}-{rates[-1]:,.0f})"
        kind = f"{pool.kind[:7]} {pool.concurrency}"
        lines.append(
            f"{dev:>7} {kind:>10} {chunk:>5} {rate:>22} {_median(busy) if busy else float('nan'):5.0%} {cells}"
        )
        lines.append(" " * 57 + shares)
    return "\n".join(lines)


def sim_targets(result: dict[str, Any], default_chunk: int) -> list[Target]:
    """The issue's three targets, each the median over rounds of a ratio within one round, for every pool of one
    process (the 2,000 items/s and ceiling targets are on one worker process) or every pool (10,000 items/s), at
    every chunk size, the default chunk size first."""
    runs: list[SimRun] = result["_runs"]
    engine: dict[int, list[float]] = result["_engine"]
    by = {(x.device, x.pool, x.chunk_size, x.round): x for x in runs}
    rounds = sorted({x.round for x in runs})
    pools = [p for p in POOLS if any(x.pool == p for x in runs)]
    chunks = sorted({x.chunk_size for x in runs}, key=lambda c: (c != default_chunk, c))
    out: list[Target] = []
    for chunk in chunks:
        tag = f"chunks of {chunk}" + (" (the default)" if chunk == default_chunk else "")
        for pool in pools:
            if pool.processes != 1:
                continue
            slow = [
                x.items_per_second / d
                for r in rounds
                if (x := by.get((2_000, pool, chunk, r))) is not None and (d := x.device_items_per_second)
            ]
            if slow:
                out.append(
                    Target(
                        f"sim: system / device at 2,000 items/s, {pool.label}, {tag}",
                        _median(slow),
                        SLOW_DEVICE_SHARE,
                        detail=_spread(slow) + "; the device's speed: its own on these items and plan",
                    )
                )
        for pool in pools:
            fast: list[float] = []
            for r in rounds:
                f, n = by.get((10_000, pool, chunk, r)), by.get((0, pool, chunk, r))
                if f is None or n is None or not f.device_items_per_second:
                    continue
                fast.append(f.items_per_second / min(f.device_items_per_second, n.items_per_second))
            if fast:
                out.append(
                    Target(
                        f"sim: system / min(device, null ceiling) at 10,000 items/s, {pool.label}, {tag}",
                        _median(fast),
                        FAST_DEVICE_SHARE,
                        detail=_spread(fast),
                    )
                )
        for pool in pools:
            if pool.processes != 1:
                continue
            ceiling = [
                x.items_per_second / engine[chunk][r]
                for r in rounds
                if (x := by.get((0, pool, chunk, r))) is not None and chunk in engine and r < len(engine[chunk])
            ]
            if ceiling:
                out.append(
                    Target(
                        f"sim: null-device ceiling ({pool.label}) / engine in-process (null device), {tag}",
                        _median(ceiling),
                        CEILING_OVER_ENGINE,
                        detail=_spread(ceiling) + f"; engine {', '.join(f'{v:,.0f}' for v in engine[chunk])} items/s",
                    )
                )
    return out
