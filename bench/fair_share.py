"""``python -m bench.fair_share``: issue 25's two numbers, on a private PostgreSQL database and Redis queue.

1. **Cancel of a queued big job.** A job of ``--cancel-items`` items (a million by default) is stored as a submit
   stores it (COPY), nothing of it released; then `Client.cancel` is timed: one transaction on the job and its
   chunks (no item row: an unrun item's state follows its job's).
2. **A small job behind a big one.** One ``inferq worker`` of one process on the simulated device
   (`bench.simulated_worker`, ``--items-per-second``); tenant ``alpha`` submits a job of ``--big-chunks`` chunks;
   once its first chunk ended, tenant ``beta`` submits one chunk. Its latency (submit to finished) and how many of
   alpha's chunks ended meanwhile, with ``INFERQ_DISPATCH=fair`` (the dispatcher; window ``--window``) and with
   ``direct`` (every message sent at submit: first in, first out).

Speed is reported, never asserted. Prints one JSON object."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.models import ensure_model
from bench.simulated import simulated_worker_program
from bench.system import client_settings, private_services, worker_env
from inferq.schema import as_utc
from inferq.store.dispatch import chunks_ended_between
from inferq.task_names import TaskName
from producer.client import Client, JobOptions, store_job
from producer.inputs import InputRecord
from worker.process import running_worker

ROOT = Path(__file__).resolve().parent.parent


def _lines(n: int) -> Iterator[InputRecord]:
    return (InputRecord(i + 1, None, {"text": f"line {i} of a big queued job"}) for i in range(n))


def bench_cancel(database_url: str, queue: str, items: int, chunk: int) -> dict[str, Any]:
    """Store a queued job of ``items`` items, then time its cancel."""
    settings = client_settings(
        {
            "INFERQ_DATABASE_URL": database_url,
            "INFERQ_BROKER_URL": "redis://",
            "INFERQ_MODELS": "{}",
            "INFERQ_DEFAULT_QUEUE": queue,
        }
    )
    with Client(settings) as client:
        job_id = uuid.uuid4().hex
        t0 = time.perf_counter()
        with client.sessions.begin() as session:
            store_job(
                session, job_id, TaskName.CLASSIFICATION, "m", {"top_k": 1}, _lines(items), chunk, queue, total=items
            )
        stored = time.perf_counter() - t0
        t0 = time.perf_counter()
        status = client.cancel(job_id)
        cancel = time.perf_counter() - t0
    return {
        "items": items,
        "chunks": -(-items // chunk),
        "store_seconds": round(stored, 2),
        "cancel_seconds": round(cancel, 3),
        "state": status.state.value,
    }


def bench_latency(
    services: Any, registry: str, model: str, dispatch: str, *, chunk: int, big_chunks: int, ips: float, window: int
) -> dict[str, Any]:
    env = {
        **worker_env(services, registry),
        "INFERQ_RECOVER_INTERVAL": "0",
        "INFERQ_DISPATCH": dispatch,
        "INFERQ_DISPATCH_WINDOW": str(window),
        "INFERQ_COALESCE_ITEMS": "0",
        "OMP_NUM_THREADS": "1",
    }
    env["INFERQ_DEFAULT_QUEUE"] = f"{services.queue}-{dispatch}"
    log = Path(tempfile.mkdtemp(prefix="inferq-bench-fair-")) / "worker.log"
    settings = client_settings(env).model_copy(update={"dispatch": dispatch})
    rows = [{"text": f"a sentence of the big job, number {i}"} for i in range(chunk * big_chunks)]
    with (
        running_worker(env, log, "--models", model, "--concurrency", "1", program=simulated_worker_program(ips)),
        Client(settings) as client,
    ):
        client.wait(client.submit(TaskName.CLASSIFICATION, model, rows[:4], chunk_size=4).job_id, timeout=600)
        big = client.submit(TaskName.CLASSIFICATION, model, rows, chunk_size=chunk, options=JobOptions(tenant="alpha"))
        while client.status(big.job_id).succeeded < chunk:
            time.sleep(0.05)
        t0 = time.perf_counter()
        small = client.submit(
            TaskName.CLASSIFICATION, model, rows[:chunk], chunk_size=chunk, options=JobOptions(tenant="beta")
        )
        done = client.wait(small.job_id, timeout=1800, poll=0.05)
        latency = time.perf_counter() - t0
        big_status = client.wait(big.job_id, timeout=1800)
        assert done.finished_at is not None and big_status.started_at and big_status.finished_at
        with client.reader() as session:
            meanwhile = chunks_ended_between(session, big.job_id, as_utc(done.created_at), done.finished_at)
    chunk_seconds = (big_status.finished_at - big_status.started_at).total_seconds() / big_chunks
    return {
        "dispatch": dispatch,
        "small_job_seconds": round(latency, 2),
        "big_chunk_seconds": round(chunk_seconds, 3),
        "small_job_in_chunk_times": round(latency / chunk_seconds, 1),
        "big_chunks_ended_meanwhile": meanwhile,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fair_share", description=__doc__.splitlines()[0])
    p.add_argument("--cancel-items", type=int, default=1_000_000)
    p.add_argument("--chunk-size", type=int, default=256)
    p.add_argument("--big-chunks", type=int, default=60)
    p.add_argument("--items-per-second", type=float, default=1_000.0)
    p.add_argument("--window", type=int, default=2)
    p.add_argument("--models-dir", type=Path, default=ROOT / ".cache" / "bench-models")
    p.add_argument("--skip-latency", action="store_true")
    args = p.parse_args(argv)
    out: dict[str, Any] = {}
    with private_services() as services:
        out["cancel"] = bench_cancel(services.database_url, services.queue, args.cancel_items, args.chunk_size)
        print(json.dumps(out), file=sys.stderr, flush=True)  # the cancel's numbers at once; stdout gets the whole
        if not args.skip_latency:
            model = ensure_model(args.models_dir, "bench-cls")
            registry = json.dumps({model.name: {"source": str(model.path), "task": model.task.value}})
            out["small_behind_big"] = [
                bench_latency(
                    services,
                    registry,
                    model.name,
                    dispatch,
                    chunk=args.chunk_size,
                    big_chunks=args.big_chunks,
                    ips=args.items_per_second,
                    window=args.window,
                )
                for dispatch in ("fair", "direct")
            ]
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
