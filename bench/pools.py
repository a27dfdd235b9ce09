"""``--concurrency 2`` against 1 on this machine's cores, on the real forward pass (part of ``--tasks sim``): the
thread policy (`worker.threads.torch_threads`) gives each pool process its share of the cores, so that more
processes never make a CPU worker slower; without it each process takes every core and the two oversubscribe them.

Two idle workers of the benchmark's classification model (the real forward, default thread policy: neither
``OMP_NUM_THREADS`` nor ``INFERQ_TORCH_THREADS`` set), one of one pool process and one of two, each on a queue of
its own; a first job each loads the model in every pool process; then the same job runs on each in interleaved
rounds, and the best round of each is compared (on a shared machine one round may meet other load)."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.models import BenchModel
from bench.report import Target
from bench.simulated import run_sim_job
from bench.system import client_settings, private_services, worker_env
from producer.client import Client
from worker.process import running_worker

log = logging.getLogger("bench")

#: Processes compared, items a job, items a chunk.
CONCURRENCIES = (1, 2)
ITEMS = 600
CHUNK = 50
#: `--concurrency 2` must reach this share of 1: "no slower", with room for a shared machine's noise.
NO_SLOWER = 0.95


def bench_pools(
    model: BenchModel, items: Sequence[dict[str, Any]], params: dict[str, Any], *, rounds: int
) -> dict[str, Any]:
    """Items/s of every round on ``--concurrency`` 1 and 2, interleaved; the best of each."""
    logs = Path(tempfile.mkdtemp(prefix="inferq-bench-pools-"))
    per_round: dict[int, list[float]] = {c: [] for c in CONCURRENCIES}
    registry = json.dumps({model.name: {"source": str(model.path), "task": model.task.value}})
    saved = {var: os.environ.pop(var, None) for var in ("OMP_NUM_THREADS", "INFERQ_TORCH_THREADS")}
    try:
        with ExitStack() as stack:
            clients = {}
            for concurrency in CONCURRENCIES:
                services = stack.enter_context(private_services())
                env = {**worker_env(services, registry), "INFERQ_RECOVER_INTERVAL": "0"}
                args = ("--models", model.name, "--concurrency", str(concurrency))
                stack.enter_context(running_worker(env, logs / f"c{concurrency}.log", *args))
                clients[concurrency] = stack.enter_context(Client(client_settings(env)))
            for concurrency, client in clients.items():
                run_sim_job(client, model.name, items[: 8 * concurrency], params, 4)  # every process loads the model
            for r in range(rounds):
                for concurrency, client in clients.items():
                    status = run_sim_job(client, model.name, items, params, CHUNK).status
                    rate = len(items) / (status.finished_at - status.started_at).total_seconds()
                    per_round[concurrency].append(rate)
                    log.info("  pools: --concurrency %d, round %d: %.1f items/s", concurrency, r + 1, rate)
    finally:
        os.environ.update({k: v for k, v in saved.items() if v is not None})
    return {
        "items": len(items),
        "chunk_size": CHUNK,
        "model": model.name,
        "cores": len(os.sched_getaffinity(0)),
        "items_per_second": {str(c): v for c, v in per_round.items()},
        "worker_logs": str(logs),
    }


def pools_line(result: dict[str, Any]) -> str:
    rates = result["items_per_second"]
    cells = ", ".join(f"--concurrency {c}: {', '.join(f'{v:.1f}' for v in rates[c])}" for c in rates)
    return (
        f"pools ({result['model']}, real forward, {result['items']} items in chunks of {result['chunk_size']}, "
        f"{result['cores']} cores, default thread policy), items/s per round: {cells}"
    )


def pools_target(result: dict[str, Any]) -> Target:
    best = {c: max(rates) for c, rates in result["items_per_second"].items()}
    return Target(
        "pools: --concurrency 2 / --concurrency 1 (best rounds, real forward, default thread policy)",
        best["2"] / best["1"],
        NO_SLOWER,
        detail=f"{best['2']:.1f} vs {best['1']:.1f} items/s",
    )
