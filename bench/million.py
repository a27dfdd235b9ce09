"""A million items end to end on the null device (``python -m bench --tasks million``; not part of ``all``: it takes
minutes): submit, run, export Parquet; and a million stored vectors exported as NPY. The wall time of each step
and the peak memory (``VmHWM``, the resident high-water mark from ``/proc``) of every process.

* submit: `producer.Client.submit` of `MILLION` classification rows in a fresh interpreter that imports the
  producer side only (as ``inferq submit`` does), the rows made there;
* run: one ``inferq worker`` on the null device (`bench.simulated_worker`, ``--pool prefork --concurrency 1``),
  from the job's ``started_at`` to its ``finished_at``;
* export Parquet: `producer.export.export_parquet` of the job, in a fresh interpreter;
* export NPY: the null device computes no vectors (it simulates sequence-level logits), so an embedding job of as
  many items is stored as a worker stores it (`bench.system.store_vectors_as_worker`, `NPY_DIM` components) and
  `producer.export.export_npy` exports it, both in a fresh interpreter.

Peak memory: each fresh interpreter reads its own ``VmHWM`` at the end; the worker's processes, the PostgreSQL
processes (the backends of the benchmark's database, and the server's background ones) and Redis are sampled
every `HWM_SAMPLE_SECONDS` while the steps run (`HwmTracker`). PostgreSQL's figures count the shared buffers a
process touched; Redis's is the shared server's since it started."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from bench.budget import BUDGET_CHUNK, job_seconds, redis_port, system_processes
from bench.measure import mib
from bench.models import BenchModel
from bench.simulated import simulated_worker_program
from bench.system import Services, client_settings, private_services, worker_env
from inferq.settings import Settings
from inferq.task_specs import TaskName
from producer.client import Client
from worker.process import running_worker

log = logging.getLogger("bench")

#: Items of the run.
MILLION = 1_000_000

#: Components of the stored vectors the NPY step exports (small: the step measures rows, not bandwidth).
NPY_DIM = 32

#: Seconds between two samples of the servers' and the worker's high-water marks.
HWM_SAMPLE_SECONDS = 0.5


def vm_hwm(pid: int | str = "self") -> int:
    """``VmHWM`` of a process (bytes; 0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def highest(peaks: Mapping[int, tuple[str, int]]) -> dict[str, dict[str, float]]:
    """Per part: the processes sampled, and the highest and summed high-water marks (MiB) of (pid → (part, bytes))."""
    out: dict[str, dict[str, float]] = {}
    for part, peak in peaks.values():
        row = out.setdefault(part, {"processes": 0, "max_mib": 0.0, "sum_mib": 0.0})
        row["processes"] += 1
        row["max_mib"] = max(row["max_mib"], mib(peak))
        row["sum_mib"] += mib(peak)
    return out


class HwmTracker:
    """Samples ``VmHWM`` of the worker's process tree, the PostgreSQL processes of ``database`` (and the server's
    background ones) and Redis; keeps each process's highest (`peaks`)."""

    def __init__(
        self, worker_pid: int, database: str, redis_port: int | None = None, every: float = HWM_SAMPLE_SECONDS
    ) -> None:
        self.worker_pid = worker_pid
        self.database = database
        self.redis_port = redis_port
        self.every = every
        self.peaks: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hwm-tracker", daemon=True)

    def sample(self) -> None:
        found = system_processes(self.worker_pid, self.database, self.redis_port)
        for pid, part in found.items():
            peak = vm_hwm(pid)
            if peak and peak >= self.peaks.get(pid, (part, 0))[1]:
                self.peaks[pid] = (part, peak)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.sample()

    def __enter__(self) -> HwmTracker:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def in_fresh_process(target: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """``target(*args)`` in a new interpreter (spawn), as a command-line producer runs: its own peak memory."""
    with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        result: dict[str, Any] = pool.apply(target, args)
    return result


def _submit(settings: dict[str, Any], model: str, n: int, chunk: int) -> dict[str, Any]:
    from bench.inputs import scale_rows
    from inferq_demo.stand_ins import corpus

    rows = scale_rows(corpus(), n)
    with Client(Settings(**settings)) as client:
        start = time.perf_counter()
        job = client.submit(TaskName.CLASSIFICATION, model, rows, {}, chunk_size=chunk)
        seconds = time.perf_counter() - start
    return {"job_id": job.job_id, "items": job.total, "seconds": seconds, "peak_mib": mib(vm_hwm())}


def _export_parquet(settings: dict[str, Any], job_id: str, path: str) -> dict[str, Any]:
    from producer.export import export_parquet

    with Client(Settings(**settings)) as client:
        start = time.perf_counter()
        with client.reader() as session:
            rows = export_parquet(session, job_id, path)
        seconds = time.perf_counter() - start
    return {"rows": rows, "seconds": seconds, "file_bytes": os.path.getsize(path), "peak_mib": mib(vm_hwm())}


def _store_vectors(settings: dict[str, Any], model: str, queue: str, n: int) -> dict[str, Any]:
    from bench.system import store_vectors_as_worker

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, NPY_DIM), dtype=np.float32)
    with Client(Settings(**settings)) as client:
        start = time.perf_counter()
        job_id = store_vectors_as_worker(client, model, queue, vectors)
        seconds = time.perf_counter() - start
    return {"job_id": job_id, "items": n, "seconds": seconds, "peak_mib": mib(vm_hwm())}


def _export_npy(settings: dict[str, Any], job_id: str, path: str) -> dict[str, Any]:
    from producer.export import export_npy

    with Client(Settings(**settings)) as client:
        start = time.perf_counter()
        with client.reader() as session:
            written = export_npy(session, job_id, path)
        seconds = time.perf_counter() - start
    rows = int(np.load(path, mmap_mode="r").shape[0])
    return {"rows": written.rows, "rows_read_back": rows, "seconds": seconds, "peak_mib": mib(vm_hwm())}


def bench_million(
    model: BenchModel,
    n: int = MILLION,
    *,
    chunk: int = BUDGET_CHUNK,
    services: Callable[[], AbstractContextManager[Services]] = private_services,
) -> dict[str, Any]:
    """The steps of this module on ``n`` items of ``model`` (a classifier) in chunks of ``chunk``; raises where a
    step's count is not ``n``."""
    registry = json.dumps({model.name: {"source": str(model.path), "task": model.task.value}})
    out: dict[str, Any] = {"items": n, "chunk_size": chunk, "model": model.name, "npy_dim": NPY_DIM}
    with tempfile.TemporaryDirectory(prefix="inferq-bench-million-") as tmp, services() as svc:
        env = {**worker_env(svc, registry), "INFERQ_RECOVER_INTERVAL": "0"}
        settings = client_settings(env).model_dump(mode="json")
        database = svc.database_url.rsplit("/", 1)[1]
        args = ("--models", model.name, "--pool", "prefork", "--concurrency", "1")
        program = simulated_worker_program(0)
        with (
            running_worker(env, Path(tmp) / "worker.log", *args, program=program) as proc,
            HwmTracker(proc.pid, database, redis_port(svc)) as hwm,
            Client(client_settings(env)) as client,
        ):
            steps = out["steps"] = {}
            steps["submit"] = in_fresh_process(_submit, settings, model.name, n, chunk)
            log.info("  million: submitted %d items in %.1f s", n, steps["submit"]["seconds"])
            status = client.wait(steps["submit"]["job_id"], timeout=7200, poll=1.0)
            if status.state.value != "succeeded" or status.succeeded != n:
                raise RuntimeError(f"million job ended {status.state.value}: {status}")
            run_seconds = job_seconds(status)
            steps["run"] = {"seconds": run_seconds, "items_per_second": n / run_seconds}
            log.info("  million: ran in %.1f s (%.0f items/s)", run_seconds, n / run_seconds)
            parquet = str(Path(tmp) / "results.parquet")
            steps["export_parquet"] = in_fresh_process(_export_parquet, settings, status.job_id, parquet)
            log.info("  million: Parquet in %.1f s", steps["export_parquet"]["seconds"])
            steps["store_vectors"] = in_fresh_process(_store_vectors, settings, "bench-vectors", svc.cold_queue, n)
            log.info("  million: %d vectors stored in %.1f s", n, steps["store_vectors"]["seconds"])
            npy = str(Path(tmp) / "vectors.npy")
            steps["export_npy"] = in_fresh_process(_export_npy, settings, steps["store_vectors"]["job_id"], npy)
            log.info("  million: NPY in %.1f s", steps["export_npy"]["seconds"])
        out["peak_memory"] = highest(hwm.peaks)
    for name in ("export_parquet", "export_npy"):
        if steps[name]["rows"] != n:
            raise RuntimeError(f"million: {name} wrote {steps[name]['rows']} rows of {n}")
    return out


def million_lines(result: Mapping[str, Any]) -> list[str]:
    """The million-item run as text: each step's wall time and peak memory, then every process's."""
    steps = result["steps"]
    lines = [f"{result['items']:,} items end to end, null device, chunks of {result['chunk_size']:,}:"]
    for name, step in steps.items():
        rate = step.get("items_per_second") or (result["items"] / step["seconds"] if step["seconds"] else 0)
        peak = f", peak RSS {step['peak_mib']:,.0f} MiB (its process)" if "peak_mib" in step else ""
        lines.append(f"  {name:<15} {step['seconds']:8.1f} s  {rate:10,.0f} items/s{peak}")
    for part, row in result["peak_memory"].items():
        lines.append(
            f"  peak RSS {part:<20} {row['max_mib']:8,.0f} MiB the largest of {row['processes']:.0f} "
            f"process(es), {row['sum_mib']:,.0f} MiB summed"
        )
    return lines


@contextmanager
def given_services(services: Services) -> Iterator[Services]:
    """``services`` as `bench_million`'s and `bench.budget.bench_budget`'s ``services`` (tests bring their own)."""
    yield services
