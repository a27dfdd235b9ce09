"""``python -m bench``: run the benchmark, print the table and the targets, write the JSON under bench/results/.

Per task, on one base-size model and one list of real inputs: the transformers pipeline at batch size 1 (its
results are the reference) and 32 (for question answering a raw forward loop instead: transformers 5.24 has no
QA pipeline), inferq's engine in-process at fp32, bf16 and int8, and the same items through the whole system
(client → Redis → one worker process → PostgreSQL), in interleaved rounds so that compared runs share the
machine's load. Then the worker's memory across consecutive jobs, many one-item jobs against one large job, and
submission, export and status at 100k items."""

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
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import inputs as bench_inputs
from bench.inprocess import (
    engine_tokens,
    load_pipeline,
    load_raw_qa,
    make_engine,
    params_for,
    ranked,
    run_engine,
    run_pipeline,
    run_raw_qa,
)
from bench.measure import Deviation, Measurement, Ranked, compare
from bench.models import MODELS, BenchModel, ensure_model, registry_json
from bench.report import Target, find, format_table, machine_info, machine_line, paired_ratio, write_json
from inferq.tasks import TaskName

log = logging.getLogger("bench")

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
DEFAULT_MODELS_DIR = ROOT / ".cache" / "bench-models"

#: Task → its benchmark model.
TASK_MODEL = {task: name for name, task in MODELS.items()}

#: Items per task (full, quick). A QA item (question + paragraph, ~130 tokens) costs ~4 classification items.
DEFAULT_N = {
    TaskName.CLASSIFICATION: (512, 128),
    TaskName.FILL_MASK: (128, 48),
    TaskName.QUESTION_ANSWERING: (64, 24),
}

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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer items everywhere (about 2 minutes)")
    p.add_argument(
        "--tasks",
        default="classification,question_answering,fill_mask",
        help="comma-separated tasks (default: all three)",
    )
    p.add_argument(
        "--n",
        type=int,
        default=None,
        help="items per task (default: 512/64/128 classification/QA/fill-mask; quick: 128/24/48)",
    )
    p.add_argument("--precisions", default="bf16,int8", help="reduced precisions to compare (default: bf16,int8)")
    p.add_argument("--skip-system", action="store_true", help="no worker: in-process runs only")
    p.add_argument("--skip-scale", action="store_true", help="no 100k-item submission/export/status runs")
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
        help="interleaved rounds per task (default: 3 classification, 2 others; quick 1)",
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.task_list = [TaskName(t.strip()) for t in args.tasks.split(",") if t.strip()]
    args.precision_list = [x.strip() for x in args.precisions.split(",") if x.strip()]
    args.scale_items = args.scale_items or (20_000 if args.quick else 100_000)
    if args.small_jobs is None:
        args.small_jobs = 50 if args.quick else 1000
    return args


@dataclass
class Run:
    """Everything one benchmark run measured."""

    measurements: list[Measurement] = field(default_factory=list)
    #: task → the engine at fp32 against the pipeline at batch size 1 (the reference).
    parity: dict[str, Deviation] = field(default_factory=dict)
    #: task → precision → the engine at that precision against the engine at fp32.
    deviation: dict[str, dict[str, Deviation]] = field(default_factory=dict)
    #: task → precision → the system's stored results against the in-process engine's.
    system_vs_engine: dict[str, dict[str, Deviation]] = field(default_factory=dict)
    memory: dict[str, Any] | None = None
    small_jobs: dict[str, Any] | None = None
    scale: dict[str, Any] | None = None
    skipped: list[str] = field(default_factory=list)
    worker_log: str | None = None
    #: `bench.report.machine_info`.
    machine: dict[str, Any] = field(default_factory=dict)


@dataclass
class System:
    """The running system, when there is one."""

    client: Any
    worker_pid: int
    cold_model: str


def items_for(task: TaskName, n: int, seed: int) -> list[dict[str, Any]]:
    from worker.tiny_models import corpus

    make = {
        TaskName.CLASSIFICATION: bench_inputs.classification_inputs,
        TaskName.QUESTION_ANSWERING: bench_inputs.qa_inputs,
        TaskName.FILL_MASK: bench_inputs.fill_mask_inputs,
    }[task]
    return make(corpus(), n, seed)


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
    baseline at batch size 1 (the reference results) runs once; ``--quick`` runs the system at fp32 only."""
    task = model.task
    rounds = args.rounds or (1 if args.quick else 3 if task is TaskName.CLASSIFICATION else 2)
    log.info("%s: %d items, %d round(s)", task.value, len(items), rounds)
    if task is TaskName.QUESTION_ANSWERING:
        raw = load_raw_qa(model)

        def baseline(bs: int, warm_up: bool) -> tuple[Measurement, list[Ranked] | None]:
            return run_raw_qa(raw, items, bs, warm_up=warm_up)
    else:
        pipe = load_pipeline(model)

        def baseline(bs: int, warm_up: bool) -> tuple[Measurement, list[Ranked] | None]:
            return run_pipeline(pipe, model, items, bs, warm_up=warm_up)

    m, piped = baseline(1, True)
    reference = list(piped) if piped is not None else None
    _add(run, m)

    precisions = ["fp32", *args.precision_list]
    engines = {p: make_engine(settings, model, p) for p in precisions}
    names = {p: model.name if p == "fp32" else f"{model.name}@{p}" for p in precisions}
    runs: dict[tuple[str, str], list[Measurement]] = {}
    results: dict[str, list[Ranked | None]] = {}
    for r in range(rounds):
        if r < 2:
            runs.setdefault((_BASELINE, "fp32"), []).append(baseline(32, r == 0)[0])
        for precision, engine in engines.items():
            m, out = run_engine(engine, model, items, precision, warm_up=r == 0)
            runs.setdefault(("engine", precision), []).append(m)
            results.setdefault(precision, out)
            if system is not None and (precision == "fp32" or not args.quick):
                sm, stored = bench_system(system, engine, model, names[precision], items, precision, warm_up=r == 0)
                runs.setdefault(("system", precision), []).append(sm)
                if r == 0:
                    run.system_vs_engine.setdefault(task.value, {})[precision] = compare(stored, out)
        log.info(
            "  round %d: %s",
            r + 1,
            ", ".join(f"{v} {p} {ms[-1].items_per_second:.1f}/s" for (v, p), ms in runs.items() if len(ms) == r + 1),
        )
    if reference is not None:
        run.parity[task.value] = compare(results["fp32"], reference)
    for precision in args.precision_list:
        run.deviation.setdefault(task.value, {})[precision] = compare(results[precision], results["fp32"])
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
) -> tuple[Measurement, list[Ranked | None]]:
    from bench.inprocess import warm_up_items
    from bench.system import run_job

    params = params_for(model.task)
    if warm_up:
        warm = run_job(system.client, model.task, name, warm_up_items(items), params, worker_pid=system.worker_pid)
        if warm.state != "succeeded":
            raise RuntimeError(f"warm-up job {warm.job_id} on {name} ended {warm.state}")
    job = run_job(system.client, model.task, name, items, params, worker_pid=system.worker_pid)
    chunk = system.client.settings.chunk_size
    real, padded = engine_tokens(engine, items, params, chunk)
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
    ms = run.measurements
    for task in args.task_list:
        t = task.value
        base = next((m for m in ms if m.task == t and m.variant.endswith("bs=32")), None)
        engine32 = find(ms, t, "engine", "fp32")
        base_name = base.variant if base else "baseline"
        for precision in ["fp32", *args.precision_list]:
            system_p, engine_p = find(ms, t, "system", precision), find(ms, t, "engine", precision)
            if system_p is not None:
                out.append(
                    Target(
                        f"{t}: system / engine ({precision})",
                        paired_ratio(system_p, engine_p),
                        SYSTEM_OVER_ENGINE,
                        detail=_cores(system_p, engine_p),
                    )
                )
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


def _cores(a: Measurement | None, b: Measurement | None) -> str:
    """The cores each side of a ratio had: a side well under its 2 threads ran on a busy machine."""
    if a is None or b is None or a.cores is None or b.cores is None:
        return ""
    return f"cores {a.cores:.1f} vs {b.cores:.1f}"


def render(run: Run, args: argparse.Namespace, info: dict[str, Any], checks: list[Target]) -> str:
    lines = [machine_line(info), ""]
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
            lines.append(
                f"{task} {precision}: system results vs in-process engine: {dev.mismatches} of {dev.items} differ "
                f"(max |Δscore| {dev.max_abs:.1e}, {dev.top_changes} top changed)"
            )
    if any(d.mismatches for devs in run.system_vs_engine.values() for p, d in devs.items() if p != "fp32"):
        lines.append(
            "  (at bf16/int8 an item's scores depend on its batch-mates: dynamic int8 quantizes activations with one "
            "scale per batch, bf16 kernels round differently per shape; the system batches per chunk, the in-process "
            "engine over all the items at once. Rerun on the same batches, both are bit-identical.)"
        )
    for task, dev in run.parity.items():
        lines.append(
            f"{task} fp32: engine vs pipeline bs=1: {dev.mismatches} of {dev.items} differ (max |Δscore| {dev.max_abs:.1e})"
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
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\..*")
    for noisy in ("alembic", "celery", "kombu", "transformers", "httpx", "worker", "inferq", "producer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import transformers

    transformers.utils.logging.disable_progress_bar()
    info = machine_info()
    log.info("%s", machine_line(info))

    from inferq.settings import Settings

    needed = list(args.task_list)
    if TaskName.CLASSIFICATION not in needed and not (args.skip_system and args.skip_scale):
        needed.append(TaskName.CLASSIFICATION)  # memory, small jobs and scale use the classifier
    models = {task: ensure_model(args.models_dir, TASK_MODEL[task]) for task in needed}
    run = Run(machine=info)

    with ExitStack() as stack:
        system: System | None = None
        models_json = registry_json(list(models.values()), tuple(args.precision_list))
        settings = Settings(models=json.loads(models_json))
        if not (args.skip_system and args.skip_scale):
            system = start_system(stack, run, args, models, models_json)
        for task in args.task_list:
            n = args.n or DEFAULT_N[task][1 if args.quick else 0]
            bench_task(
                run,
                args,
                models[task],
                items_for(task, n, args.seed),
                settings,
                system if not args.skip_system else None,
            )
        if system is not None and not args.skip_system:
            bench_worker_life(run, args, system, models[TaskName.CLASSIFICATION])
        if system is not None and not args.skip_scale:
            from bench.system import scale_in_fresh_process

            log.info("scale: %d items (in a fresh interpreter, as a producer runs: no torch)", args.scale_items)
            run.scale = scale_in_fresh_process(system.client.settings, system.cold_model, args.scale_items)

    checks = targets(run, args)
    print(render(run, args, info, checks))
    out = args.out or RESULTS_DIR / f"{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}{'-quick' if args.quick else ''}.json"
    payload = {
        "machine": info,
        "command": " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])]),
        "models": {
            "architecture": "distilbert base (6 layers, width 768, 12 heads), random weights, built by "
            "worker.tiny_models.build_model(size='base')",
            "vocab_size": {t.value: _vocab(m) for t, m in models.items()},
            "max_length": 512,
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
        "skipped": run.skipped,
        "worker_log": run.worker_log,
        "targets": checks,
    }
    path = write_json(out, payload)
    print(f"\nwritten: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


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
            warm = run_job(client, task, TASK_MODEL[task], items_for(task, 4, args.seed), params_for(task))
            if warm.state != "succeeded":
                raise RuntimeError(
                    f"first job on {TASK_MODEL[task]} ended {warm.state}; worker log: {logs / 'worker.log'}"
                )
    return System(client, pid, cold)


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
