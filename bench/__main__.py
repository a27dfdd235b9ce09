"""``python -m bench``: run the benchmark, print the table and the targets, write the JSON under bench/results/.

Per task, on one realistic model and one list of real inputs: the reference implementation at batch size 32
(the transformers pipeline; for question answering a raw forward loop instead, transformers 5.24 has no QA
pipeline; ``SentenceTransformer.encode`` for embeddings; ``CrossEncoder.predict`` for rerank; the zero-shot
pipeline), and for classification, QA and fill-mask also the pipeline at batch size 1 (its results are the
reference), inferq's engine in-process at fp32, bf16 and int8, and the same items through the whole system
(client → Redis → one worker process → PostgreSQL), in interleaved rounds so that compared runs share the
machine's load. Then the worker's memory across consecutive jobs, many one-item jobs against one large job,
submission, export and status at 100k items, and for embeddings the bytes of a stored vector and the NPY export
of 100k stored vectors. ``--tasks sim`` (part of ``all``): the whole system on a simulated accelerator
(`bench.simulated`): items/s, the device's busy fraction and where each chunk's time goes. ``--tasks budget`` (part
of ``all``): the machine's CPU an item, every process, against in-process loops (`bench.budget`). ``--tasks
million`` (not part of ``all``: minutes): a million items end to end on the null device (`bench.million`)."""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import inputs as bench_inputs
from bench.inprocess import (
    Result,
    engine_tokens,
    load_cross_encoder,
    load_pipeline,
    load_raw_qa,
    load_sentence_transformer,
    load_zero_shot_pipeline,
    make_engine,
    params_for,
    ranked,
    run_cross_encoder,
    run_encode,
    run_engine,
    run_pipeline,
    run_raw_qa,
    run_zero_shot_pipeline,
)
from bench.measure import Deviation, Measurement, VectorDeviation, compare, compare_vectors, describe
from bench.models import DESCRIPTIONS, MODELS, BenchModel, ensure_model, registry_json
from bench.report import Target, find, format_table, machine_info, machine_line, paired_ratio, write_json
from inferq.task_specs import TaskName

log = logging.getLogger("bench")

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
DEFAULT_MODELS_DIR = ROOT / ".cache" / "bench-models"

#: Task → its benchmark model.
TASK_MODEL = {task: name for name, task in MODELS.items()}

#: The tasks of the first benchmark (``--tasks classic``), and those whose targets hold the whole system to a
#: sentence-transformers or transformers reference (``--tasks encoders``).
CLASSIC_TASKS = (TaskName.CLASSIFICATION, TaskName.QUESTION_ANSWERING, TaskName.FILL_MASK)
ENCODER_TASKS = (TaskName.EMBEDDING, TaskName.ZERO_SHOT_CLASSIFICATION, TaskName.RERANK)
TASK_GROUPS = {"all": CLASSIC_TASKS + ENCODER_TASKS, "classic": CLASSIC_TASKS, "encoders": ENCODER_TASKS}

#: Items per task (full, quick). A QA item (question + paragraph, ~130 tokens) costs ~4 classification items; a
#: zero-shot item is one pair per label (10), a rerank item one pair per document (50).
DEFAULT_N = {
    TaskName.CLASSIFICATION: (512, 128),
    TaskName.FILL_MASK: (128, 48),
    TaskName.QUESTION_ANSWERING: (64, 24),
    TaskName.EMBEDDING: (2000, 256),
    TaskName.ZERO_SHOT_CLASSIFICATION: (1000, 24),
    TaskName.RERANK: (200, 8),
}

#: Items per task of the peer tables (``--tasks peers``, and quick or ``all``'s smaller set): fewer rerank queries
#: than its own task's, each query's 50 pairs running through a dozen rows (CrossEncoder alone runs ~1-2 queries/s
#: on 2 cores).
PEER_N = {
    TaskName.EMBEDDING: (2000, 512),
    TaskName.CLASSIFICATION: (512, 128),
    TaskName.RERANK: (24, 8),
}

#: Interleaved rounds per task in a full run (quick: 1); the baseline at batch size 32 runs in the first two.
DEFAULT_ROUNDS = {TaskName.CLASSIFICATION: 3, TaskName.EMBEDDING: 3}

#: The targets of the issue.
SYSTEM_OVER_ENGINE = 0.9
ENGINE_OVER_PIPELINE = 1.5
REDUCED_OVER_PIPELINE = 4.0
STORE_ITEMS_PER_SECOND = 20_000
EXPORT_ROWS_PER_SECOND = 50_000
#: ``status`` on a 100k-item job against a 10-item job (median latency): constant time, within noise.
STATUS_RATIO = 2.0
#: Worker RSS growth across the consecutive jobs (second half's highest over the first half's), allowed for
#: allocator noise.
MEMORY_GROWTH = 0.02
SMALL_OVER_LARGE = 0.5
#: The system over the task's reference (at batch size 32): at fp32, and at each reduced precision.
SYSTEM_OVER_REFERENCE: dict[TaskName, tuple[float, float]] = {
    TaskName.EMBEDDING: (1.0, 2.5),
    TaskName.ZERO_SHOT_CLASSIFICATION: (1.5, 3.0),
    TaskName.RERANK: (1.5, 3.0),
}
NPY_VECTORS_PER_SECOND = 200_000
#: Items of the float16 storage job (a subset of the embedding items).
FLOAT16_ITEMS = 256


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer items everywhere (a few minutes)")
    p.add_argument(
        "--tasks",
        default="all",
        help="comma-separated tasks, or all (the default), classic (classification, question_answering, "
        "fill_mask), encoders (embedding, zero_shot_classification, rerank) or sim (the whole system on a "
        "simulated accelerator, bench.simulated) or budget (the CPU an item of every process against in-process loops, "
        "bench.budget) or million (a million items on the null device: submit, run, export; bench.million; not part of "
        "all) or peers (sentence-transformers, CTranslate2 and ONNX Runtime beside inferq's engine and whole system on "
        "the real all-MiniLM-L6-v2, and classification and rerank peers, with each row's quality tier and the "
        "system-over-peer targets, bench.peers; all runs a smaller peer set)",
    )
    p.add_argument(
        "--n",
        type=int,
        default=None,
        help="items per task (default, quick: "
        + "; ".join(f"{t.value} {full}, {quick}" for t, (full, quick) in DEFAULT_N.items())
        + "); a zero-shot item is a text (x 10 labels), a rerank item a query (x 50 documents)",
    )
    p.add_argument("--precisions", default="bf16,int8", help="reduced precisions to compare (default: bf16,int8)")
    p.add_argument("--skip-system", action="store_true", help="no worker: in-process runs only")
    p.add_argument(
        "--skip-scale", action="store_true", help="no 100k-item submission/export/status runs, no NPY export"
    )
    p.add_argument("--scale-items", type=int, default=None, help="items of the scale job (default 100000; quick 20000)")
    p.add_argument(
        "--small-jobs",
        type=int,
        default=None,
        help="one-item jobs submitted at once (default 1000; quick 50; 0: skip)",
    )
    p.add_argument(
        "--memory-jobs", type=int, default=10, help="consecutive jobs for the memory check (default 10; 0: skip)"
    )
    p.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR, help="where the built models are cached")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default: bench/results/<date>.json)")
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="interleaved rounds per task (default: 3 classification and embedding, 2 others; quick 1)",
    )
    p.add_argument(
        "--peer-tasks",
        default=",".join(t.value for t in PEER_N),
        help="the peer tables --tasks peers runs, comma-separated (default: embedding, classification, rerank)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--million-items", type=int, default=None, help="items of --tasks million (default 1,000,000)")
    p.add_argument(
        "--http",
        action="store_true",
        help="the HTTP API's section alone (bench/http_api.py: status under 50 clients, uploads and results "
        "over HTTP against the client and the CLI, the server's memory through a 1M-line upload)",
    )
    p.add_argument("--skip-http", action="store_true", help="no HTTP API section in a full run")
    p.add_argument("--http-rounds", type=int, default=1, help="alternating upload rounds of the HTTP section")
    args = p.parse_args(argv)
    words = [w.strip() for w in args.tasks.split(",")]
    args.sim = "sim" in words or "all" in words
    args.peers = "peers" in words or "all" in words
    #: ``all`` (the default ``make bench``) runs the smaller peer set (`PEER_N`'s second column); ``peers`` the full.
    args.peers_small = "peers" not in words
    args.budget = "budget" in words or "all" in words
    args.million = "million" in words
    rest = ",".join(w for w in words if w not in ("sim", "peers", "budget", "million"))
    alone = args.sim or args.peers or args.budget or args.million
    args.task_list = task_list(rest) if rest or not alone else []
    args.precision_list = [x.strip() for x in args.precisions.split(",") if x.strip()]
    peer_tasks = [w.strip() for w in args.peer_tasks.split(",") if w.strip()]
    known = [t.value for t in PEER_N]
    if not peer_tasks or any(w not in known for w in peer_tasks):
        raise SystemExit(f"python -m bench: --peer-tasks takes {', '.join(known)}, not {args.peer_tasks!r}")
    args.peer_task_list = [TaskName(w) for w in peer_tasks]
    args.scale_items = args.scale_items or (20_000 if args.quick else 100_000)
    if args.small_jobs is None:
        args.small_jobs = 50 if args.quick else 1000
    return args


def task_list(spec: str) -> list[TaskName]:
    """``--tasks``: task names (``-`` or ``_``) and group names (`TASK_GROUPS`), comma-separated; each task once, in
    the order given."""
    out: list[TaskName] = []
    for word in (w.strip() for w in spec.split(",")):
        if not word:
            continue
        try:
            tasks = TASK_GROUPS.get(word) or (TaskName(word.replace("-", "_")),)
        except ValueError:
            known = ", ".join([*TASK_GROUPS, *(t.value for t in TASK_GROUPS["all"])])
            raise SystemExit(f"python -m bench: unknown task {word!r} (known: {known})") from None
        out.extend(t for t in tasks if t not in out)
    if not out:
        raise SystemExit("python -m bench: no task given")
    return out


@dataclass
class Run:
    """Everything one benchmark run measured."""

    measurements: list[Measurement] = field(default_factory=list)
    #: task → the engine at fp32 against the reference results (the pipeline at batch size 1; for embedding,
    #: zero-shot and rerank the reference's first run at batch size 32).
    parity: dict[str, Deviation | VectorDeviation] = field(default_factory=dict)
    #: task → precision → the engine at that precision against the engine at fp32.
    deviation: dict[str, dict[str, Deviation | VectorDeviation]] = field(default_factory=dict)
    #: task → precision → the system's stored results against the in-process engine's.
    system_vs_engine: dict[str, dict[str, Deviation | VectorDeviation]] = field(default_factory=dict)
    memory: dict[str, Any] | None = None
    small_jobs: dict[str, Any] | None = None
    scale: dict[str, Any] | None = None
    #: Embeddings: bytes per stored vector at float32 and float16 (`bench.system.vector_storage`).
    vectors: dict[str, Any] | None = None
    #: Embeddings: exporting stored vectors as NPY (`bench.system.npy_export_scale`).
    npy_export: dict[str, Any] | None = None
    skipped: list[str] = field(default_factory=list)
    worker_log: str | None = None
    #: `bench.report.machine_info`.
    machine: dict[str, Any] = field(default_factory=dict)
    #: The whole system on a simulated accelerator (`bench.simulated.bench_simulated`).
    sim: dict[str, Any] | None = None
    #: The per-item CPU budget (`bench.budget.bench_budget`).
    budget: dict[str, Any] | None = None
    #: A million items end to end (`bench.million.bench_million`).
    million: dict[str, Any] | None = None


@dataclass
class System:
    """The running system, when there is one."""

    client: Any
    worker_pid: int
    cold_model: str


def items_for(task: TaskName, n: int, seed: int) -> list[dict[str, Any]]:
    from inferq_demo.stand_ins import corpus

    make = {
        TaskName.CLASSIFICATION: bench_inputs.classification_inputs,
        TaskName.QUESTION_ANSWERING: bench_inputs.qa_inputs,
        TaskName.FILL_MASK: bench_inputs.fill_mask_inputs,
        TaskName.EMBEDDING: bench_inputs.embedding_inputs,
        TaskName.ZERO_SHOT_CLASSIFICATION: bench_inputs.zero_shot_inputs,
        TaskName.RERANK: bench_inputs.rerank_inputs,
    }[task]
    return make(corpus(), n, seed)


def compare_results(task: TaskName, got: list[Result], want: list[Result]) -> Deviation | VectorDeviation:
    """Vectors by cosine and component (embeddings), ranked results by key and score (the rest)."""
    if task is TaskName.EMBEDDING:
        return compare_vectors(got, want)  # type: ignore[arg-type]
    return compare(got, want)  # type: ignore[arg-type]


Baseline = Callable[[int, bool], tuple[Measurement, list[Result] | None]]


def load_baseline(model: BenchModel, items: list[dict[str, Any]]) -> Baseline:
    """The task's reference implementation, as ``baseline(batch_size, warm_up)``."""
    task = model.task
    if task is TaskName.QUESTION_ANSWERING:
        raw = load_raw_qa(model)
        return lambda bs, warm_up: run_raw_qa(raw, items, bs, warm_up=warm_up)
    if task is TaskName.EMBEDDING:
        st = load_sentence_transformer(model)
        return lambda bs, warm_up: run_encode(st, items, bs, warm_up=warm_up)
    if task is TaskName.RERANK:
        ce = load_cross_encoder(model)
        return lambda bs, warm_up: run_cross_encoder(ce, items, bs, warm_up=warm_up)
    if task is TaskName.ZERO_SHOT_CLASSIFICATION:
        zs = load_zero_shot_pipeline(model)
        return lambda bs, warm_up: run_zero_shot_pipeline(zs, items, bs, warm_up=warm_up)
    pipe = load_pipeline(model)
    return lambda bs, warm_up: run_pipeline(pipe, model, items, bs, warm_up=warm_up)


def bench_task(
    run: Run,
    args: argparse.Namespace,
    model: BenchModel,
    items: list[dict[str, Any]],
    settings: Any,
    system: System | None,
) -> None:
    """The task's rows, in interleaved rounds: each round runs the baseline at batch size 32 (the first two
    rounds only: it is the slowest), then at every precision the engine and the system, back to back, so that
    a round's runs share the machine's load; the targets take the median of the rounds' paired ratios. The
    pipeline at batch size 1 (the reference results of classification, QA and fill-mask) runs once; the other
    tasks' reference results are their baseline's first run. ``--quick`` runs the system at fp32 only, except
    for the tasks whose targets are on the system (`SYSTEM_OVER_REFERENCE`)."""
    task = model.task
    rounds = args.rounds or (1 if args.quick else DEFAULT_ROUNDS.get(task, 2))
    log.info("%s: %d items, %d round(s)", task.value, len(items), rounds)
    baseline = load_baseline(model, items)
    reference: list[Result] | None = None
    if task not in SYSTEM_OVER_REFERENCE:
        m, piped = baseline(1, True)
        reference = list(piped) if piped is not None else None
        _add(run, m)

    precisions = ["fp32", *args.precision_list]
    engines = {p: make_engine(settings, model, p) for p in precisions}
    names = {p: model.name if p == "fp32" else f"{model.name}@{p}" for p in precisions}
    runs: dict[tuple[str, str], list[Measurement]] = {}
    results: dict[str, list[Result]] = {}
    for r in range(rounds):
        if r < 2:
            m, out = baseline(32, r == 0)
            runs.setdefault((_BASELINE, "fp32"), []).append(m)
            if reference is None and task in SYSTEM_OVER_REFERENCE:
                reference = out
        for precision, engine in engines.items():
            m, out = run_engine(engine, model, items, precision, warm_up=r == 0)
            runs.setdefault(("engine", precision), []).append(m)
            results.setdefault(precision, out)
            if system is not None and (precision == "fp32" or not args.quick or task in SYSTEM_OVER_REFERENCE):
                sm, stored = bench_system(system, engine, model, names[precision], items, precision, warm_up=r == 0)
                runs.setdefault(("system", precision), []).append(sm)
                if r == 0:
                    run.system_vs_engine.setdefault(task.value, {})[precision] = compare_results(task, stored, out)
        log.info(
            "  round %d: %s",
            r + 1,
            ", ".join(f"{v} {p} {ms[-1].items_per_second:.1f}/s" for (v, p), ms in runs.items() if len(ms) == r + 1),
        )
    if reference is not None:
        run.parity[task.value] = compare_results(task, results["fp32"], reference)
    for precision in args.precision_list:
        run.deviation.setdefault(task.value, {})[precision] = compare_results(task, results[precision], results["fp32"])
    order = {key: precisions.index(key[1]) * 10 + _ROW_ORDER[key[0]] for key in runs}
    for key in sorted(runs, key=order.__getitem__):
        ms = runs[key]
        best = max(ms, key=lambda x: x.items_per_second)
        best.extra["runs_items_per_second"] = [x.items_per_second for x in ms]
        best.extra["runs_cores"] = [x.cores for x in ms]
        _add(run, best)
    del engines
    gc.collect()


#: Keys of a task's runs, and the order of its rows in the table.
_BASELINE = "baseline"
_ROW_ORDER = {_BASELINE: 0, "engine": 1, "system": 2}


def _add(run: Run, m: Measurement) -> None:
    run.measurements.append(m)
    runs = m.extra.get("runs_items_per_second")
    every = f" (runs: {', '.join(f'{x:.1f}' for x in runs)})" if runs and len(runs) > 1 else ""
    log.info("  %s%s", _short(m), every)


def bench_system(
    system: System,
    engine: Any,
    model: BenchModel,
    name: str,
    items: list[dict[str, Any]],
    precision: str,
    *,
    warm_up: bool = True,
) -> tuple[Measurement, list[Result]]:
    from bench.inprocess import warm_up_for
    from bench.system import run_job, stored_vectors

    params = params_for(model.task)
    if warm_up:
        warm = run_job(
            system.client, model.task, name, warm_up_for(model.task, items), params, worker_pid=system.worker_pid
        )
        if warm.state != "succeeded":
            raise RuntimeError(f"warm-up job {warm.job_id} on {name} ended {warm.state}")
    job = run_job(system.client, model.task, name, items, params, worker_pid=system.worker_pid)
    chunk = system.client.settings.chunk_size
    real, padded = engine_tokens(engine, items, params, chunk)
    stored: list[Result]
    if model.task is TaskName.EMBEDDING:
        stored = list(stored_vectors(system.client, job.job_id))
    else:
        stored = [ranked(model.task, r.result) for r in system.client.results(job.job_id)]
    m = Measurement(
        model.task.value,
        "system (1 worker)",
        precision,
        job.items,
        job.seconds,
        real,
        padded,
        peak_rss_mib=job.peak_rss_mib,
        cpu_seconds=job.cpu_seconds,
        notes=f"{job.state}, {job.failed} failed; submit {job.submit_seconds:.2f}s; chunks of {chunk}",
        extra={"job_id": job.job_id, "submit_seconds": job.submit_seconds},
    )
    return m, stored


def _short(m: Measurement) -> str:
    cores = f", {m.cores:.1f} cores" if m.cores is not None else ""
    return f"{m.variant} {m.precision}: {m.items_per_second:.1f} items/s, padding {m.padding_ratio:.2f}{cores}"


# -- targets --------------------------------------------------------------------------------------------------


def targets(run: Run, args: argparse.Namespace) -> list[Target]:
    out: list[Target] = []
    if run.sim is not None:
        from bench.simulated import sim_targets
        from inferq import constants

        out.extend(sim_targets(run.sim, constants.DEFAULT_CHUNK_SIZE))
        if run.sim.get("pools"):
            from bench.pools import pools_target

            out.append(pools_target(run.sim["pools"]))
    if run.budget is not None:
        from bench.budget import budget_targets

        out.extend(budget_targets(run.budget))
    ms = run.measurements
    for task in args.task_list:
        if task in SYSTEM_OVER_REFERENCE:
            out.extend(system_targets(run, args, task))
            continue
        t = task.value
        base = next((m for m in ms if m.task == t and m.variant.endswith("bs=32")), None)
        engine32 = find(ms, t, "engine", "fp32")
        base_name = base.variant if base else "baseline"
        out.extend(system_over_engine(ms, t, ["fp32", *args.precision_list]))
        out.append(
            Target(
                f"{t}: engine / {base_name} (fp32)",
                paired_ratio(engine32, base),
                ENGINE_OVER_PIPELINE,
                detail=_cores(engine32, base),
            )
        )
        parity = run.parity.get(t)
        if parity is not None:
            out.append(
                Target(
                    f"{t}: engine fp32 results unlike the pipeline's (top differs or |Δscore| > 1e-5)",
                    float(parity.mismatches),
                    0,
                    "<=",
                    f"of {parity.items}; max |Δscore| {parity.max_abs:.1e}",
                )
            )
        for precision in args.precision_list:
            dev = run.deviation.get(t, {}).get(precision)
            engine_p = find(ms, t, "engine", precision)
            detail = (
                f"max |Δscore| vs fp32 {dev.max_abs:.2e}, mean {dev.mean_abs:.2e}; {dev.top_changes}/{dev.items} "
                f"top {'answers' if task is TaskName.QUESTION_ANSWERING else 'labels/tokens'} changed; "
                if dev
                else ""
            ) + _cores(engine_p, base)
            if precision == "bf16" and not run.machine.get("native_bf16", True):
                detail += "; this CPU has no native bf16 (emulated; `auto` picks fp32 here)"
            out.append(
                Target(
                    f"{t}: engine {precision} / {base_name}",
                    paired_ratio(engine_p, base),
                    REDUCED_OVER_PIPELINE,
                    detail=detail,
                )
            )
    if run.npy_export is not None:
        x = run.npy_export
        out.append(
            Target(
                f"export {x['vectors']:,} stored {x['dim']}-d vectors as NPY (vectors/s)",
                x["vectors_per_second"],
                NPY_VECTORS_PER_SECOND,
                detail=f"{x['function']}; {x['mib_per_second']:,.0f} MiB/s; file equals the stored vectors: "
                f"{x['equal']}",
            )
        )
    if run.scale is not None:
        s = run.scale
        out.append(
            Target(
                f"submit {s['items']:,} items into PostgreSQL (Client.submit, items/s)",
                s["submit_items_per_second"],
                STORE_ITEMS_PER_SECOND,
                detail=(
                    f"store alone: executemany {s['store_executemany_items_per_second']:,.0f}/s, "
                    f"COPY {s['store_copy_items_per_second']:,.0f}/s; validation {s['validate_items_per_second']:,.0f}/s"
                ),
            )
        )
        out.append(
            Target(
                f"export {s['export_rows']:,} rows as JSONL (rows/s)",
                s["export_rows_per_second"],
                EXPORT_ROWS_PER_SECOND,
            )
        )
        out.append(
            Target(
                f"status on a {s['items']:,}-item job / on a 10-item job (median latency)",
                s["status_big_median_ms"] / s["status_small_median_ms"],
                STATUS_RATIO,
                "<=",
                f"{s['status_big_median_ms']:.2f} ms vs {s['status_small_median_ms']:.2f} ms",
            )
        )
    if run.memory is not None:
        mem = run.memory
        out.append(
            Target(
                f"worker RSS growth across {mem['jobs']} consecutive jobs (fraction)",
                mem["growth_fraction"],
                MEMORY_GROWTH,
                "<=",
                f"{mem['growth_mib']:+.1f} MiB; after each job: "
                + ", ".join(f"{x:.0f}" for x in mem["rss_after_mib"])
                + " MiB",
            )
        )
    if run.small_jobs is not None:
        sj = run.small_jobs
        out.append(
            Target(
                f"{sj['jobs']} one-item jobs / one {sj['jobs']}-item job (items/s)",
                sj["ratio"],
                SMALL_OVER_LARGE,
                detail=(
                    f"{sj['items_per_second']:.1f} vs {sj['large_items_per_second']:.1f} items/s; submitting "
                    f"{sj['submits_per_second']:.0f} jobs/s meanwhile"
                    + (
                        f"; after the last submit the worker alone did {sj['drain_items_per_second']:.1f} items/s"
                        if sj.get("drain_items_per_second")
                        else ""
                    )
                ),
            )
        )
    return out


def system_targets(run: Run, args: argparse.Namespace, task: TaskName) -> list[Target]:
    """A task held to its reference: the system over the reference at batch size 32 at fp32 and at each reduced
    precision (`SYSTEM_OVER_REFERENCE`), the system over the engine (`SYSTEM_OVER_ENGINE`, where the loss lies),
    and the engine's fp32 results against the reference's."""
    out: list[Target] = []
    t = task.value
    ms = run.measurements
    base = next((m for m in ms if m.task == t and m.variant.endswith("bs=32")), None)
    base_name = base.variant if base else "reference"
    at_fp32, reduced = SYSTEM_OVER_REFERENCE[task]
    system32 = find(ms, t, "system", "fp32")
    out.append(
        Target(
            f"{t}: system / {base_name} (fp32)",
            paired_ratio(system32, base),
            at_fp32,
            detail=_cores(system32, base),
        )
    )
    for precision in args.precision_list:
        system_p = find(ms, t, "system", precision)
        dev = run.deviation.get(t, {}).get(precision)
        parts = []
        if isinstance(dev, VectorDeviation):
            parts.append(f"engine vectors' cosine to fp32 min {dev.min_cosine:.5f}, mean {dev.mean_cosine:.5f}")
        elif dev is not None:
            parts.append(f"engine max |Δscore| vs fp32 {dev.max_abs:.2e}; {dev.top_changes}/{dev.items} top changed")
        parts.append(_cores(system_p, base))
        if precision == "bf16" and not run.machine.get("native_bf16", True):
            parts.append("this CPU has no native bf16 (emulated; `auto` picks fp32 here)")
        detail = "; ".join(p for p in parts if p)
        out.append(
            Target(f"{t}: system {precision} / {base_name}", paired_ratio(system_p, base), reduced, detail=detail)
        )
    out.extend(system_over_engine(ms, t, ["fp32", *args.precision_list]))
    parity = run.parity.get(t)
    if parity is not None:
        if isinstance(parity, VectorDeviation):
            what = "a component differs by > 1e-5"
            detail = f"of {parity.items}; max |Δ| {parity.max_abs:.1e}, cosine min {parity.min_cosine:.7f}"
        else:
            what = "top differs or |Δscore| > 1e-5"
            detail = f"of {parity.items}; max |Δscore| {parity.max_abs:.1e}"
        out.append(
            Target(f"{t}: engine fp32 results unlike {base_name}'s ({what})", float(parity.mismatches), 0, "<=", detail)
        )
    return out


def system_over_engine(ms: list[Measurement], task: str, precisions: list[str]) -> list[Target]:
    """The system over the in-process engine at each precision the system ran (`SYSTEM_OVER_ENGINE`)."""
    out = []
    for precision in precisions:
        system_p, engine_p = find(ms, task, "system", precision), find(ms, task, "engine", precision)
        if system_p is not None:
            out.append(
                Target(
                    f"{task}: system / engine ({precision})",
                    paired_ratio(system_p, engine_p),
                    SYSTEM_OVER_ENGINE,
                    detail=_cores(system_p, engine_p),
                )
            )
    return out


def _cores(a: Measurement | None, b: Measurement | None) -> str:
    """The cores each side of a ratio had: a side well under its 2 threads ran on a busy machine."""
    if a is None or b is None or a.cores is None or b.cores is None:
        return ""
    return f"cores {a.cores:.1f} vs {b.cores:.1f}"


def render(run: Run, args: argparse.Namespace, info: dict[str, Any], checks: list[Target]) -> str:
    lines = [machine_line(info), ""]
    if run.sim is not None:
        from bench.simulated import breakdown_table, cpu_table

        sizes = ", ".join(f"{int(n):,} in chunks of {c}" for c, n in run.sim["items"].items())
        lines.append(f"simulated device (classification items a job: {sizes}; {run.sim['rounds']} rounds):")
        lines.append(breakdown_table(run.sim["_runs"]))
        lines.append(
            "items/s: from the job's started_at to its finished_at (both stamped by the worker). busy: the device's "
            "computing time over that. Stages: worker.stages; gap: between two chunks of the job in one process "
            f"(broker round trip, Celery); worker logs under {run.sim['worker_logs']}."
        )
        lines.append(cpu_table(run.sim["_runs"], run.sim["_engine_cpu"], run.sim["_engine"]))
        lines.append(
            "busy cores: the machine's CPU time (every process) over the job's wall time; CPU ms a chunk: the worker "
            "(its processes), PostgreSQL (every postgres process), Redis, the rest (this benchmark's client, the OS), "
            "the machine in all, from /proc between the job's submission and its end."
        )
        if run.sim.get("pools"):
            from bench.pools import pools_line

            lines.append(pools_line(run.sim["pools"]))
        lines.append("")
    if run.budget is not None:
        from bench.budget import budget_table

        b = run.budget
        lines.append(
            f"CPU budget ({b['items']:,} classification items, chunks of {b['chunk_size']:,}, {b['model']}, "
            f"{b['torch_threads']} torch thread(s) in the worker and the loop; one worker process):"
        )
        lines.append(budget_table(b))
        lines.append(
            "CPU: /proc utime+stime of the worker tree, the PostgreSQL backends of the benchmark's database, "
            "PostgreSQL's background processes and Redis (both shared with any other load), and the producer's "
            f"submission; loops: this process. Worker logs under {b['worker_logs']}."
        )
        lines.append("")
    if run.million is not None:
        from bench.million import million_lines

        lines.extend(million_lines(run.million))
        lines.append("")
    if not run.measurements:
        lines.extend(t.line() for t in checks)
        return "\n".join(lines)
    lines.append(format_table(run.measurements))
    lines.append(
        "items/s: items over wall time; system: from Client.submit to the job's finished_at (stamped by the worker "
        "as it writes the last chunk; the client polls at its default 0.5 s). tokens/s: real (unpadded) tokens. "
        "pad: padded/real tokens. cores: CPU seconds per wall second of the process doing the work (this one, or "
        "the worker tree); under 2 means other load on the machine took the rest. peak RSS: the worker tree, which "
        "holds every model it has loaded so far. vs base: best run over the task's best bs=32 run; the targets "
        "take the median, over rounds, of ratios within a round. Rows show each variant's best run."
    )
    lines.append("")
    for task, devs in run.system_vs_engine.items():
        for precision, dev in devs.items():
            lines.append(f"{task} {precision}: system results vs in-process engine: {describe(dev)}")
    if any(d.mismatches for devs in run.system_vs_engine.values() for p, d in devs.items() if p != "fp32"):
        lines.append(
            "  (at bf16/int8 an item's scores depend on its batch-mates: dynamic int8 quantizes activations with one "
            "scale per batch, bf16 kernels round differently per shape; the system batches per chunk, the in-process "
            "engine over all the items at once. Rerun on the same batches, both are bit-identical.)"
        )
    for task, dev in run.parity.items():
        reference = "pipeline bs=1" if TaskName(task) not in SYSTEM_OVER_REFERENCE else _baseline_name(run, task)
        lines.append(f"{task} fp32: engine vs {reference}: {describe(dev)}")
    for task, devs in run.deviation.items():
        for precision, dev in devs.items():
            lines.append(f"{task} {precision}: engine vs engine fp32: {describe(dev)}")
    if run.vectors is not None:
        v = run.vectors
        lines.append(
            "stored embedding ("
            + "; ".join(
                f"{dtype}: {x['items']} items, vector {x['vector_bytes']:.0f} bytes of data, "
                f"pg_column_size {x['vector_column_bytes']:.1f} bytes on average (max {x['vector_column_bytes_max']}), "
                f"result JSON {x['result_column_bytes']:.0f} bytes"
                for dtype, x in v["dtypes"].items()
            )
            + ")"
        )
        if v.get("float16_vs_float32"):
            lines.append(f"  float16 stored vs float32 stored: {describe(v['float16_vs_float32'])}")
    if run.npy_export is not None:
        x = run.npy_export
        lines.append(
            f"NPY export ({x['function']}): {x['vectors']:,} vectors of {x['dim']} in {x['seconds']:.2f} s (best of "
            f"{len(x['seconds_runs'])}): {x['vectors_per_second']:,.0f} vectors/s, {x['mib_per_second']:,.0f} MiB/s; "
            f"storing them as the worker does took {x['store_seconds']:.1f} s"
        )
    if run.scale is not None:
        s = run.scale
        lines.append(
            f"scale ({s['items']:,} items): Client.submit {s['submit_items_per_second']:,.0f} items/s; store only: "
            f"executemany {s['store_executemany_items_per_second']:,.0f}/s, COPY {s['store_copy_items_per_second']:,.0f}/s "
            f"(same rows: {s['copy_rows_equal']}); export {s['export_rows_per_second']:,.0f} rows/s; status "
            f"{s['status_big_median_ms']:.2f} ms (p95 {s['status_big_p95_ms']:.2f}) vs {s['status_small_median_ms']:.2f} ms "
            f"(p95 {s['status_small_p95_ms']:.2f}) on 10 items"
        )
    for reason in run.skipped:
        lines.append(f"skipped: {reason}")
    lines.append("")
    lines.extend(t.line() for t in checks)
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s bench: %(message)s", datefmt="%H:%M:%S", stream=sys.stderr
    )
    if args.http:
        return main_http(args, argv)
    if args.peers:
        main_peers(args, argv)
        if not (args.task_list or args.sim or args.budget or args.million):
            return 0
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\..*")
    for noisy in (
        "alembic",
        "celery",
        "kombu",
        "transformers",
        "sentence_transformers",
        "httpx",
        "worker",
        "inferq",
        "producer",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import transformers

    transformers.utils.logging.disable_progress_bar()
    info = machine_info()
    log.info("%s", machine_line(info))

    from inferq.settings import Settings

    run = Run(machine=info)
    if args.sim:
        bench_sim(run, args)
    if args.budget:
        bench_budget_section(run, args)
    if args.million:
        bench_million_section(run, args)
    if args.task_list:
        bench_tasks(run, args)
    http: dict[str, Any] | None = None
    if not args.skip_http and args.task_list:  # ``--tasks sim`` runs alone
        http = bench_http_section(args)

    checks = targets(run, args)
    print(render(run, args, info, checks))
    if http is not None:
        from bench.http_api import render as render_http

        print("\n" + render_http(http))
    out = args.out or RESULTS_DIR / f"{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}{'-quick' if args.quick else ''}.json"
    settings = Settings()
    models = {t: ensure_model(args.models_dir, TASK_MODEL[t]) for t in args.task_list}
    payload = {
        "machine": info,
        "command": " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])]),
        "code": code_version(),
        "models": {
            "architecture": {t.value: DESCRIPTIONS[m.name] for t, m in models.items()},
            "path": {t.value: m.path for t, m in models.items()},
            "vocab_size": {t.value: _vocab(m) for t, m in models.items()},
            "max_length": 512,
        },
        "inputs": {
            "items": {t.value: args.n or DEFAULT_N[t][1 if args.quick else 0] for t in args.task_list},
            "zero_shot_labels": list(bench_inputs.ZERO_SHOT_LABELS),
            "rerank_documents_per_query": bench_inputs.RERANK_DOCUMENTS,
        },
        "settings": {
            "max_batch_tokens": settings.max_batch_tokens,
            "max_batch_size": settings.max_batch_size,
            "chunk_size": settings.chunk_size,
        },
        "measurements": run.measurements,
        "parity_engine_vs_pipeline_bs1": run.parity,
        "deviation_vs_fp32": run.deviation,
        "system_vs_engine": run.system_vs_engine,
        "memory": run.memory,
        "small_jobs": run.small_jobs,
        "scale": run.scale,
        "vectors": run.vectors,
        "npy_export": run.npy_export,
        "simulated_device": {k: v for k, v in run.sim.items() if not k.startswith("_")} if run.sim else None,
        "budget": {k: v for k, v in run.budget.items() if not k.startswith("_")} if run.budget else None,
        "million": run.million,
        "skipped": run.skipped,
        "worker_log": run.worker_log,
        "targets": checks,
        "http": http,
    }
    path = write_json(out, payload)
    print(f"\nwritten: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


def bench_http_section(args: argparse.Namespace) -> dict[str, Any]:
    """The HTTP API's section (`bench.http_api`), or why it was skipped."""
    try:
        import server.app  # noqa: F401  (the server extra: FastAPI, uvicorn)
    except ImportError as exc:
        return {"skipped": f"the server package does not import ({exc})"}
    from bench.http_api import bench_http

    return bench_http(args.models_dir, quick=args.quick, rounds=args.http_rounds)


def main_http(args: argparse.Namespace, argv: list[str] | None) -> int:
    """``--http``: the HTTP API's section alone; its JSON under bench/results/ (``-http``)."""
    from bench.http_api import render as render_http
    from bench.http_api import targets as http_targets

    for noisy in ("alembic", "celery", "kombu", "httpx", "worker", "inferq", "producer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    info = machine_info()
    log.info("%s", machine_line(info))
    http = bench_http_section(args)
    print(render_http(http))
    out = args.out or RESULTS_DIR / f"{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}-http{'-quick' if args.quick else ''}.json"
    payload = {
        "machine": info,
        "command": " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])]),
        "code": code_version(),
        "http": http,
        "targets": [
            {"what": what, "value": value, "target": target, "met": met}
            for what, value, target, met in http_targets(http)
        ],
    }
    path = write_json(out, payload)
    print(f"\nwritten: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


def main_peers(args: argparse.Namespace, argv: list[str] | None) -> None:
    """The peer tables (`bench.peers`) of embedding, classification and rerank on their tasks' items and benchmark
    models, inferq's whole system among the rows (one worker process holding every variant, unless
    ``--skip-system``), each table's targets; their JSON under bench/results/ (``-peers``)."""
    import torch

    from bench.peers import bench_peers, native_bf16, system_peers
    from bench.peers import render as render_peers

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for noisy in ("transformers", "sentence_transformers", "worker", "inferq", "onnxruntime", "celery", "kombu"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    info = machine_info()
    log.info("%s", machine_line(info))
    small = args.quick or args.peers_small
    tasks = args.peer_task_list
    models = {task: ensure_model(args.models_dir, TASK_MODEL[task]) for task in tasks}
    bf16 = native_bf16()
    tables: dict[str, Any] = {}
    skipped: list[str] = []
    out = (
        args.out
        if args.out and not args.task_list
        else RESULTS_DIR / f"{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}-peers{'-quick' if small else ''}.json"
    )

    def write() -> Path:
        """The JSON so far: written after every task's table, so that a run stopped later keeps the tables done."""
        payload = {
            "machine": info,
            "command": " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])]),
            "code": code_version(),
            "peers": tables,
            "skipped": skipped,
        }
        return write_json(out, payload)

    with ExitStack() as stack:
        client = None if args.skip_system else start_peer_system(stack, models, bf16, skipped)
        for task in tasks:
            model = models[task]
            n = args.n or PEER_N[task][1 if small else 0]
            items = items_for(task, n, args.seed)
            texts: list[Any] = items if task is TaskName.RERANK else [i["text"] for i in items]
            rounds = args.rounds or (1 if args.quick else 2)
            cache = args.models_dir / "peers" / model.name
            extra = system_peers(client, task.value, model.name, model.path, bf16) if client is not None else []
            peers = bench_peers(model.path, cache, texts, rounds, torch.get_num_threads(), task.value, extra)
            print(f"\npeers, {task.value}: {n} items ({model.name}), {rounds} round(s), {peers['threads']} threads")
            print(render_peers(peers["_rows"]))
            for target in peers["_targets"]:
                print(target.line())
            tables[task.value] = {k: v for k, v in peers.items() if not k.startswith("_")}
            write()
    for reason in skipped:
        print(f"skipped: {reason}")
    path = write()
    print(f"\nwritten: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


def start_peer_system(
    stack: ExitStack, models: dict[TaskName, BenchModel], bf16: bool, skipped: list[str]
) -> Any | None:
    """Private services and one worker (``inferq worker``'s defaults: on a CPU one process on every core)
    holding every variant of `bench.peers.SYSTEM_VARIANTS` (preloaded, and each warmed by a small job); the client,
    or ``None`` (the reason in ``skipped``) without services."""
    from bench.peers import SYSTEM_WARM_ITEMS, system_registry
    from bench.system import ServicesUnavailable, client_settings, private_services, run_job, worker_env
    from producer.client import Client
    from worker.process import running_worker

    try:
        services = stack.enter_context(private_services())
    except ServicesUnavailable as exc:
        skipped.append(f"the whole system's peer rows: {exc}")
        return None
    registry = system_registry({t.value: (m.name, m.path) for t, m in models.items()}, bf16)
    env = worker_env(services, json.dumps(registry))
    client = stack.enter_context(Client(client_settings(env)))
    logs = Path(tempfile.mkdtemp(prefix="inferq-bench-peers-"))
    log.info("starting a worker (its default pool) holding %s (log %s)", ", ".join(registry), logs)
    stack.enter_context(running_worker(env, logs / "worker.log", "--models", ",".join(registry), ready_timeout=600))
    for name, entry in registry.items():
        task = TaskName(entry["task"])
        items = items_for(task, SYSTEM_WARM_ITEMS[task.value], 0)
        warm = run_job(client, task, name, items, params_for(task))
        if warm.state != "succeeded":
            raise RuntimeError(f"first job on {name} ended {warm.state}; worker log: {logs / 'worker.log'}")
    return client


def bench_sim(run: Run, args: argparse.Namespace) -> None:
    """The whole system on the simulated device (`bench.simulated`)."""
    from bench.pools import ITEMS as POOL_ITEMS
    from bench.pools import bench_pools
    from bench.simulated import CHUNK_SIZES, CHUNKS_PER_JOB, ROUNDS, bench_simulated
    from bench.system import ServicesUnavailable

    model = ensure_model(args.models_dir, TASK_MODEL[TaskName.CLASSIFICATION])
    # Every job the same number of chunks at every chunk size, unless --n fixes its items.
    chunks_per_job = None if args.n else CHUNKS_PER_JOB[1 if args.quick else 0]
    n = args.n or max(CHUNK_SIZES) * (chunks_per_job or 0)
    rounds = args.rounds or ROUNDS[1 if args.quick else 0]
    log.info(
        "simulated device: %s a job, %d round(s)",
        f"{chunks_per_job} chunks" if chunks_per_job else f"{n} items",
        rounds,
    )
    try:
        items = items_for(TaskName.CLASSIFICATION, n, args.seed)
        run.sim = bench_simulated(model, items, params_for(model.task), rounds=rounds, chunks_per_job=chunks_per_job)
        run.sim["pools"] = bench_pools(model, items[:POOL_ITEMS], params_for(model.task), rounds=max(2, rounds))
    except ServicesUnavailable as exc:
        run.skipped.append(f"simulated device: {exc}")


def bench_budget_section(run: Run, args: argparse.Namespace) -> None:
    """The per-item CPU budget (`bench.budget`): ``--n`` items (default `bench.budget.BUDGET_CHUNKS` chunks)."""
    from bench.budget import BUDGET_CHUNK, BUDGET_CHUNKS, bench_budget, ensure_tiny_model
    from bench.system import ServicesUnavailable

    n = args.n or BUDGET_CHUNK * (BUDGET_CHUNKS // 4 if args.quick else BUDGET_CHUNKS)
    try:
        items = items_for(TaskName.CLASSIFICATION, n, args.seed)
        model = ensure_tiny_model(args.models_dir)
        run.budget = bench_budget(model, items, params_for(TaskName.CLASSIFICATION))
    except ServicesUnavailable as exc:
        run.skipped.append(f"budget: {exc}")


def bench_million_section(run: Run, args: argparse.Namespace) -> None:
    """A million items end to end (`bench.million`; ``--million-items`` sets how many)."""
    from bench.budget import ensure_tiny_model
    from bench.million import MILLION, bench_million
    from bench.system import ServicesUnavailable

    n = args.million_items or MILLION
    try:
        run.million = bench_million(ensure_tiny_model(args.models_dir), n)
    except ServicesUnavailable as exc:
        run.skipped.append(f"million: {exc}")


def bench_tasks(run: Run, args: argparse.Namespace) -> None:
    """Every task of ``--tasks``: in-process, the system, memory, small jobs, scale."""
    from inferq.settings import Settings

    needed = list(args.task_list)
    if TaskName.CLASSIFICATION not in needed and not (args.skip_system and args.skip_scale):
        needed.append(TaskName.CLASSIFICATION)  # memory, small jobs and scale use the classifier
    models = {task: ensure_model(args.models_dir, TASK_MODEL[task]) for task in needed}

    with ExitStack() as stack:
        system: System | None = None
        models_json = registry_json(list(models.values()), tuple(args.precision_list))
        settings = Settings(models=json.loads(models_json))
        if not (args.skip_system and args.skip_scale):
            system = start_system(stack, run, args, models, models_json)
        for task in args.task_list:
            n = args.n or DEFAULT_N[task][1 if args.quick else 0]
            items = items_for(task, n, args.seed)
            bench_task(run, args, models[task], items, settings, system if not args.skip_system else None)
            if task is TaskName.EMBEDDING and system is not None and not args.skip_system:
                bench_vector_storage(run, system, models[task], items)
        if TaskName.EMBEDDING in args.task_list and system is not None and not args.skip_scale:
            from bench.system import npy_export_in_fresh_process

            log.info("NPY export: %d stored vectors (in a fresh interpreter, as a producer runs)", args.scale_items)
            settings_ = system.client.settings
            run.npy_export = npy_export_in_fresh_process(
                settings_, settings_.queue_for(system.cold_model), args.scale_items
            )
        if system is not None and not args.skip_system:
            bench_worker_life(run, args, system, models[TaskName.CLASSIFICATION])
        if system is not None and not args.skip_scale:
            from bench.system import scale_in_fresh_process

            log.info("scale: %d items (in a fresh interpreter, as a producer runs: no torch)", args.scale_items)
            run.scale = scale_in_fresh_process(system.client.settings, system.cold_model, args.scale_items)


def code_version() -> dict[str, Any]:
    """The commit the run started from, and the files that differed from it (uncommitted work measured too)."""
    import subprocess

    def git(*cmd: str) -> str:
        try:
            return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    status = git(
        "status", "--porcelain", "--untracked-files=all", "--", "bench", "inferq", "producer", "worker", "server"
    )
    return {
        "commit": git("rev-parse", "HEAD").strip() or None,
        "uncommitted": [x[3:] for x in status.splitlines() if x],
    }


def _baseline_name(run: Run, task: str) -> str:
    base = next((m for m in run.measurements if m.task == task and m.variant.endswith("bs=32")), None)
    return base.variant if base else "reference"


def _vocab(model: BenchModel) -> int:
    config = json.loads((model.path / "config.json").read_text())
    return int(config["vocab_size"])


def start_system(
    stack: ExitStack, run: Run, args: argparse.Namespace, models: dict[TaskName, BenchModel], models_json: str
) -> System | None:
    from bench.system import (
        ServicesUnavailable,
        client_settings,
        private_services,
        run_job,
        worker_env,
    )
    from producer.client import Client
    from worker.process import running_worker

    try:
        services = stack.enter_context(private_services())
    except ServicesUnavailable as exc:
        run.skipped.append(f"system and scale runs: {exc}")
        return None
    # The cold model: the classifier on a queue no worker consumes, for jobs that must never run.
    entries = json.loads(models_json)
    cold = "bench-cold"
    entries[cold] = {**entries[TASK_MODEL[TaskName.CLASSIFICATION]], "queue": services.cold_queue}
    env = worker_env(services, json.dumps(entries))
    client = stack.enter_context(Client(client_settings(env)))
    pid = 0
    if not args.skip_system:
        logs = Path(tempfile.mkdtemp(prefix="inferq-bench-"))  # kept: the worker's log, for a look afterwards
        preload = [TASK_MODEL[t] for t in args.task_list]
        log.info("starting a worker (preloading %s)", ", ".join(preload))
        worker = stack.enter_context(
            running_worker(env, logs / "worker.log", "--models", ",".join(preload), ready_timeout=300)
        )
        pid = worker.pid
        run.worker_log = str(logs / "worker.log")
        # Ready is said before the pool's process has loaded its models: wait for that on one small job each.
        for task in args.task_list:
            warm = run_job(client, task, TASK_MODEL[task], items_for(task, 2, args.seed), params_for(task))
            if warm.state != "succeeded":
                raise RuntimeError(
                    f"first job on {TASK_MODEL[task]} ended {warm.state}; worker log: {logs / 'worker.log'}"
                )
    return System(client, pid, cold)


def bench_vector_storage(run: Run, system: System, model: BenchModel, items: list[dict[str, Any]]) -> None:
    """The bytes of a stored vector: in the last fp32 system job of the embedding items (float32, the default),
    and in a job of `FLOAT16_ITEMS` of them stored as float16; and how far the float16 vectors lie from the
    float32 ones."""
    from bench.system import run_job, stored_vectors, vector_storage

    job32 = next(
        (
            m.extra["job_id"]
            for m in run.measurements
            if m.task == model.task.value and m.variant.startswith("system") and m.precision == "fp32"
        ),
        None,
    )
    if job32 is None:
        return
    subset = items[:FLOAT16_ITEMS]
    params = {**params_for(model.task), "dtype": "float16"}
    job16 = run_job(system.client, model.task, model.name, subset, params, worker_pid=system.worker_pid)
    if job16.state != "succeeded":
        raise RuntimeError(f"float16 job {job16.job_id} ended {job16.state}")
    want = stored_vectors(system.client, job32)[: len(subset)]
    run.vectors = {
        "dtypes": {
            "float32": vector_storage(system.client, job32),
            "float16": vector_storage(system.client, job16.job_id),
        },
        "float16_vs_float32": compare_vectors(stored_vectors(system.client, job16.job_id), want),
    }
    log.info("  stored vectors: %s", run.vectors["dtypes"])


def bench_worker_life(run: Run, args: argparse.Namespace, system: System, model: BenchModel) -> None:
    from bench.system import many_small_jobs, memory_across_jobs, run_job

    task = model.task
    params = params_for(task)
    per_job = 8 if args.quick else 64
    if args.memory_jobs > 0:
        log.info("memory: %d consecutive jobs of %d items", args.memory_jobs, per_job)
        run.memory = memory_across_jobs(
            system.client,
            task,
            model.name,
            items_for(task, per_job, args.seed + 1),
            params,
            system.worker_pid,
            args.memory_jobs,
        )
    n = args.small_jobs
    if n <= 0:
        return
    items = items_for(task, n, args.seed + 2)
    log.info("small jobs: one job of %d items, then %d one-item jobs", n, n)
    large = run_job(system.client, task, model.name, items, params, worker_pid=system.worker_pid)
    small = many_small_jobs(system.client, task, model.name, items, params)
    small["large_items_per_second"] = large.items / large.seconds
    small["ratio"] = small["items_per_second"] / small["large_items_per_second"]
    run.small_jobs = small


if __name__ == "__main__":
    sys.exit(main())
