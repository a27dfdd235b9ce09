"""The whole system on a simulated accelerator (``python -m bench --tasks sim``): what keeps a fast device busy.

A real ``inferq worker`` (started through `bench.simulated_worker`; one process; one process of three threads
sharing the loaded model, the default on an accelerator; two processes; one device for all of them) runs the benchmark's classification items on
`bench.simulated_device` at device speeds of 2,000 and 10,000 items/s and on the null device (no time: the
control plane's ceiling); everything but the forward pass is the real thing (Redis, PostgreSQL, claim, read,
tokenize, postprocess, write, commit). Per job: items/s, the device's busy fraction (its computing time over the
job's time), and where the chunks' time went, read from the worker's log (each chunk's line ends with its
stages, `worker.stages`). Beside them, the engine in-process on the null device, chunk by chunk: tokenize and
postprocess alone, what the system's ceiling is held to.

CPU. Every job is bracketed by two `bench.measure.cpu_snapshot`s: the CPU it cost the worker, PostgreSQL, Redis
and the rest of the machine, per chunk, and how many of the machine's cores were busy; the engine in-process
records its own. Where the null-device job keeps every core busy, the ceiling is the machine's CPU, and no
overlap can raise it: the ceiling target's detail says at most what ratio these cores allow (cores × the engine's
wall time a chunk ÷ the system's CPU time a chunk).

A job's time is from its ``started_at`` (its first chunk claimed) to its ``finished_at`` (its last chunk
written), both stamped by the worker: the rate at which the system works through a queue of chunks, without the
submission of the job (which in steady state overlaps other jobs' work) and one broker delivery.

Rounds: each round starts one worker per (pool, device) in turn and runs every chunk size on it, then the
engine in-process; ratios are taken within a round, and the targets take their median over rounds."""

from __future__ import annotations

import json
import logging
import os
import re
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.measure import cpu_between, cpu_snapshot
from bench.models import BenchModel
from bench.report import Target
from bench.simulated_device import simulated_engine_factory
from bench.system import client_settings, private_services, worker_env
from inferq.schema import utcnow
from inferq.settings import Settings
from inferq.task_specs import TaskName, read_params
from producer.client import Client
from worker.model_cache import ModelCache
from worker.process import running_worker
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
    #: CPU seconds the job cost (`bench.measure.cpu_between`: worker, postgres, redis, other, machine) and the wall
    #: seconds between the two snapshots; empty where not measured.
    cpu: dict[str, float] = field(default_factory=dict)
    cpu_window: float = 0.0

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

    def cpu_per_chunk(self, part: str) -> float | None:
        """CPU seconds a chunk that ``part`` (`bench.measure.cpu_between`'s) spent in the job; None where not
        measured."""
        return self.cpu[part] / self.chunks if self.cpu and self.chunks else None

    @property
    def busy_cores(self) -> float | None:
        """The machine's cores busy on average during the job (every process, the system's and any other)."""
        return self.cpu["machine"] / self.cpu_window if self.cpu and self.cpu_window > 0 else None

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
            "cpu_seconds": self.cpu,
            "cpu_window_seconds": self.cpu_window,
            "busy_cores": self.busy_cores,
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


@dataclass
class SimJob:
    job_id: str
    status: Any
    #: From Client.submit to the job's finished_at.
    end_to_end_seconds: float
    #: What the job cost in CPU (`bench.measure.cpu_between`), from its submission's return (its items stored,
    #: its messages sent) to the client seeing it finished, and that window's wall seconds.
    cpu: dict[str, float]
    cpu_window: float


def run_sim_job(
    client: Any,
    model: str,
    items: Sequence[dict[str, Any]],
    params: dict[str, Any],
    chunk: int,
    worker_pid: int | None = None,
) -> SimJob:
    wall_start = utcnow()
    job = client.submit(TaskName.CLASSIFICATION, model, list(items), params, chunk_size=chunk)
    before = cpu_snapshot(worker_pid) if worker_pid else None
    t0 = time.perf_counter()
    status = client.wait(job.job_id, timeout=1800, poll=0.2)
    after = cpu_snapshot(worker_pid) if worker_pid else None
    window = time.perf_counter() - t0
    if status.state.value != "succeeded" or status.succeeded != len(items):
        raise RuntimeError(f"simulated-device job {job.job_id} ended {status.state.value}: {status}")
    e2e = (status.finished_at - wall_start).total_seconds()
    return SimJob(job.job_id, status, e2e, cpu_between(before, after), window)


def engine_in_process(
    model: BenchModel, items: Sequence[dict[str, Any]], params: dict[str, Any], chunk: int
) -> tuple[float, float]:
    """Items/s of the engine on the null device, in this process, run chunk by chunk (tokenize, plan, postprocess:
    the CPU work of a chunk without SQL or broker), and its CPU seconds a chunk (the tokenizer's threads too)."""
    settings = Settings(models={model.name: {"source": str(model.path), "task": model.task.value}})
    engine = ModelCache(settings, engine_factory=simulated_engine_factory(0)).engine(model.name, model.task)
    typed = read_params(model.task, params)
    engine.run(list(items[:chunk]), typed)  # warm up
    start, cpu = time.perf_counter(), time.process_time()
    for at in range(0, len(items), chunk):
        engine.run(list(items[at : at + chunk]), typed)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return len(items) / seconds, cpu * chunk / len(items)


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
    runs: list[SimRun] = []
    engine: dict[int, list[float]] = defaultdict(list)
    engine_cpu: dict[int, list[float]] = defaultdict(list)
    logs = Path(tempfile.mkdtemp(prefix="inferq-bench-sim-"))
    with private_services() as services:
        registry = json.dumps({model.name: {"source": str(model.path), "task": model.task.value}})
        for r in range(rounds):
            for pool in pools:
                for device in devices:
                    env = {**worker_env(services, registry), "INFERQ_RECOVER_INTERVAL": "0"}
                    path = logs / f"worker-r{r}-{pool.kind}{pool.concurrency}-d{device}.log"
                    args = ("--models", model.name, "--pool", pool.kind, "--concurrency", str(pool.concurrency))
                    program = simulated_worker_program(device)
                    with (
                        running_worker(env, path, *args, program=program) as proc,
                        Client(client_settings(env)) as client,
                    ):
                        # Ready is said before the pool processes have loaded the model: one small job each.
                        run_sim_job(client, model.name, items[: 8 * pool.concurrency], params, 4)
                        for chunk in chunk_sizes:
                            job = job_items(items, chunk, chunks_per_job)
                            done = run_sim_job(client, model.name, job, params, chunk, proc.pid)
                            st = done.status
                            seconds = (st.finished_at - st.started_at).total_seconds()
                            n_chunks, stages = chunk_stages(path.read_text(errors="replace"), done.job_id)
                            run = SimRun(
                                device,
                                pool,
                                chunk,
                                r,
                                len(job),
                                seconds,
                                done.end_to_end_seconds,
                                n_chunks,
                                stages,
                                done.cpu,
                                done.cpu_window,
                            )
                            runs.append(run)
                            log.info("  sim %s", _short(run))
            for chunk in chunk_sizes:
                rate, cpu = engine_in_process(model, job_items(items, chunk, chunks_per_job), params, chunk)
                engine[chunk].append(rate)
                engine_cpu[chunk].append(cpu)
                log.info(
                    "  sim engine in-process, null device, chunks of %d: %.0f items/s, %.1f ms CPU a chunk",
                    chunk,
                    rate,
                    1000 * cpu,
                )
    return {
        "items": {str(c): len(job_items(items, c, chunks_per_job)) for c in chunk_sizes},
        "chunks_per_job": chunks_per_job,
        "rounds": rounds,
        "devices": list(devices),
        "pools": [p.label for p in pools],
        "chunk_sizes": list(chunk_sizes),
        "runs": [x.to_json() for x in runs],
        "engine_in_process_items_per_second": {str(c): v for c, v in engine.items()},
        "engine_in_process_cpu_seconds_per_chunk": {str(c): v for c, v in engine_cpu.items()},
        "cores": os.cpu_count(),
        "worker_logs": str(logs),
        "_runs": runs,
        "_engine": dict(engine),
        "_engine_cpu": dict(engine_cpu),
    }


def simulated_worker_program(items_per_second: float) -> tuple[str, ...]:
    """The command line that runs ``inferq worker`` on a simulated device of ``items_per_second``, before the
    worker's options (`bench.simulated_worker`)."""
    return (sys.executable, "-m", "bench.simulated_worker", "--items-per-second", f"{items_per_second:g}")


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


#: The parts `cpu_table` shows, in order.
_CPU_PARTS = ("worker", "postgres", "redis", "other", "machine")


def cpu_table(runs: list[SimRun], engine_cpu: dict[int, list[float]], engine: dict[int, list[float]]) -> str:
    """Per variant: the machine's busy cores during the job and the CPU milliseconds a chunk cost each part (medians
    over rounds); then the engine in-process's CPU a chunk and its cores (CPU over wall time)."""
    groups: dict[tuple[int, Pool, int], list[SimRun]] = defaultdict(list)
    for x in runs:
        if x.cpu:
            groups[(x.device, x.pool, x.chunk_size)].append(x)
    if not groups:
        return "CPU: not measured (no /proc)"
    lines = [
        f"{'device':>7} {'pool':>10} {'chunk':>5} {'busy cores':>10}  CPU ms a chunk: "
        + " ".join(f"{n:>8}" for n in _CPU_PARTS)
    ]
    order = {p: i for i, p in enumerate(POOLS)}
    for (device, pool, chunk), xs in sorted(groups.items(), key=lambda g: (g[0][0], order.get(g[0][1], 9), g[0][2])):
        busy = _median([b for x in xs if (b := x.busy_cores) is not None])
        cells = " ".join(
            f"{_median([1000 * c for x in xs if (c := x.cpu_per_chunk(n)) is not None]):8.1f}" for n in _CPU_PARTS
        )
        dev = "null" if device == 0 else f"{device:,}"
        lines.append(
            f"{dev:>7} {pool.kind[:7] + ' ' + str(pool.concurrency):>10} {chunk:>5} {busy:10.2f}  {'':16}{cells}"
        )
    for chunk, cpus in sorted(engine_cpu.items()):
        rates = engine.get(chunk, [])
        cores = [c * r / chunk for c, r in zip(cpus, rates, strict=False)]
        lines.append(
            f"engine in-process, chunks of {chunk}: {_median([1000 * c for c in cpus]):.1f} ms CPU a chunk on "
            f"{_median(cores):.2f} cores (the tokenizer's threads)"
        )
    return "\n".join(lines)


def cpu_bound(run: SimRun, engine_rate: float, cores: int) -> float | None:
    """The most the null-device ceiling / engine ratio could be on ``cores`` cores, given the CPU ``run`` cost the
    whole machine a chunk and the engine's wall time a chunk: (cores ÷ machine CPU a chunk) ÷ (1 ÷ engine time a
    chunk). None where the CPU was not measured."""
    per_chunk = run.cpu_per_chunk("machine")
    if not per_chunk:
        return None
    return cores * (run.chunk_size / engine_rate) / per_chunk


def sim_targets(result: dict[str, Any], default_chunk: int) -> list[Target]:
    """The issue's three targets, each the median over rounds of a ratio within one round, for every pool of one
    process (the 2,000 items/s and ceiling targets are on one worker process) or every pool (10,000 items/s), at
    every chunk size, the default chunk size first."""
    runs: list[SimRun] = result["_runs"]
    engine: dict[int, list[float]] = result["_engine"]
    cores = int(result.get("cores") or os.cpu_count() or 1)
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
            nulls = [
                (x, engine[chunk][r])
                for r in rounds
                if (x := by.get((0, pool, chunk, r))) is not None and chunk in engine and r < len(engine[chunk])
            ]
            ceiling = [x.items_per_second / e for x, e in nulls]
            if ceiling:
                bounds = [b for x, e in nulls if (b := cpu_bound(x, e, cores)) is not None]
                allowed = (
                    f"; these {cores} cores allow at most {_median(bounds):.2f} (the machine's CPU a chunk in the job,"
                    f" {_median([1000 * c for x, _ in nulls if (c := x.cpu_per_chunk('machine'))]):.1f} ms, on"
                    f" {_median([c for x, _ in nulls if (c := x.busy_cores) is not None]):.2f} busy cores)"
                    if bounds
                    else ""
                )
                out.append(
                    Target(
                        f"sim: null-device ceiling ({pool.label}) / engine in-process (null device), {tag}",
                        _median(ceiling),
                        CEILING_OVER_ENGINE,
                        detail=_spread(ceiling)
                        + f"; engine {', '.join(f'{v:,.0f}' for v in engine[chunk])} items/s"
                        + allowed,
                    )
                )
    return out
