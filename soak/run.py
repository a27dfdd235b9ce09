"""One soak run: the system up, a fault-free phase, a phase with faults, a quiet period, the verdict."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import platform
import re
import shutil
import tempfile
import threading
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from inferq.celery_app import create_celery
from inferq.constants import MAX_CHUNK_ATTEMPTS
from inferq.db import make_engine, make_sessionmaker
from inferq.errors import BrokerUnavailable, DatabaseUnavailable, InvalidInput
from inferq.schema import Job, Result, utcnow
from inferq.settings import Settings
from inferq.states import FINISHED_JOB_STATES, UNFINISHED_JOB_STATES
from inferq.tenants import set_share
from producer.client import Client, JobOptions
from soak.cluster import Workers, private_database, proxied, worker_env
from soak.faults import KINDS, REDIS_ONLY, Injector, schedule
from soak.verdict import judge
from soak.workload import JobSpec, build_models, job_stream
from tests.support.brokers import PrivateRedis, delete_queue
from tests.support.tcp_proxy import tcp_proxy

log = logging.getLogger(__name__)


@dataclass
class Options:
    duration: float = 1800
    seed: int = 1
    workers: int = 3
    faults: list[str] = field(default_factory=lambda: list(KINDS))
    broker: str = "redis"
    json_path: Path | None = None
    pg_admin_url: str = "postgresql://postgres@127.0.0.1:5432/test"
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672//"
    #: Share of the run before the first fault (its throughput is the fault-free figure).
    clean_share: float = 0.25
    #: Mean seconds between two faults.
    fault_every: float = 30
    #: Unfinished items the submitter keeps queued (it submits whenever fewer are).
    backlog: int = 1500
    #: Longest wait after the run for every job to end.
    quiet: float | None = None
    #: Worker settings left at their defaults unless given.
    lease_seconds: int | None = None
    recover_interval: int | None = None
    recover_older_than: int | None = None
    big_items: tuple[int, int] = (200, 1200)
    #: Where to copy the workers' logs at the end (they live in a temporary directory otherwise).
    logs_dir: Path | None = None


@dataclass
class Submitted:
    specs: dict[str, JobSpec] = field(default_factory=dict)
    refused_invalid: int = 0
    accepted_invalid: list[int] = field(default_factory=list)
    refused_by_outage: int = 0
    cancelled: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)


def quiet_seconds(settings: Settings) -> float:
    """Long enough for every recovery path to have run: a lease and a half (dead workers), two full reconciler
    rounds after the missing-message threshold (a restarted broker), and time to run what they re-enqueue."""
    return 1.5 * settings.lease_seconds + 2 * settings.recover_interval + settings.recover_older_than + 120


def run(opts: Options) -> dict[str, Any]:
    faults = [k for k in opts.faults if opts.broker == "redis" or k not in REDIS_ONLY]
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="inferq-soak-")))
        log.info("building models in %s", tmp)
        models = build_models(tmp / "models")
        database_url = stack.enter_context(private_database(opts.pg_admin_url))
        proxy = stack.enter_context(tcp_proxy("127.0.0.1", 5432))
        queue = f"inferq-soak-{opts.seed}-{int(time.time())}"
        redis: PrivateRedis | None = None
        if opts.broker == "redis":
            (tmp / "redis").mkdir()
            redis = PrivateRedis(tmp / "redis")
            redis.start()
            stack.callback(redis.stop)
            broker_url = redis.url
        else:
            broker_url = opts.amqp_url
            stack.callback(delete_queue, broker_url, queue)
        overrides = {
            "lease_seconds": opts.lease_seconds,
            "recover_interval": opts.recover_interval,
            "recover_older_than": opts.recover_older_than,
        }
        given: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
        registry = models.registry()
        env = worker_env(
            proxied(database_url, proxy.port),
            broker_url,
            queue,
            registry,
            **given,
        )
        settings = Settings(
            database_url=database_url, broker_url=broker_url, default_queue=queue, models=registry, max_batch_size=8
        )
        worker_settings = Settings(database_url=database_url, **given)
        engine = make_engine(settings)
        stack.callback(engine.dispose)
        sessions = make_sessionmaker(engine)
        _set_shares(sessions)
        (tmp / "logs").mkdir()
        workers = Workers(env, tmp / "logs", ",".join(registry))
        stack.callback(workers.stop_all)
        started = [workers.start() for _ in range(opts.workers)]
        workers.wait_ready(started)
        client = stack.enter_context(Client(settings))

        fault_start = opts.duration * opts.clean_share
        plan = schedule(opts.seed, faults, fault_start, opts.duration - 5, opts.fault_every)
        print(f"soak: seed {opts.seed}, {opts.duration:.0f}s, {opts.workers} workers, broker {opts.broker}")
        print(f"soak: fault schedule ({len(plan)} faults, first at {fault_start:.0f}s):")
        for f in plan:
            print(f"  t={f.at:7.1f}s  {f.kind:<13} pick={f.pick:.3f} hold={f.hold}s")

        injector = Injector(
            workers, sessions, create_celery(settings, name="inferq-soak"), proxy, redis, 2 * opts.workers
        )
        stop = threading.Event()
        submitted = Submitted()
        t0 = time.monotonic()
        wall0 = utcnow()
        fault_thread = threading.Thread(target=injector.run, args=(plan, t0, stop), name="soak-faults", daemon=True)
        fault_thread.start()
        _submit_until(client, sessions, models, opts, submitted, t0, stop)
        stop.set()
        fault_thread.join()
        wall_faults_end = utcnow()
        run_seconds = time.monotonic() - t0

        # The quiet period: no new jobs, no new faults; at least one worker; every job must end.
        if not workers.live:
            workers.wait_ready([workers.start()])
        quiet_limit = opts.quiet if opts.quiet is not None else quiet_seconds(worker_settings)
        quiet_used = _wait_all_finished(sessions, list(submitted.specs), quiet_limit)
        workers.stop_all()
        logs = workers.logs()
        if opts.logs_dir is not None:
            shutil.copytree(tmp / "logs", opts.logs_dir, dirs_exist_ok=True)

        log.info("judging %d jobs against the in-process reference", len(submitted.specs))
        verdict = judge(settings, sessions, submitted.specs)
        clean = _throughput(sessions, wall0 + dt.timedelta(seconds=5), wall0 + dt.timedelta(seconds=fault_start))
        faulty = _throughput(sessions, wall0 + dt.timedelta(seconds=fault_start), wall_faults_end)
        summary: dict[str, Any] = {
            "seed": opts.seed,
            "duration_s": round(run_seconds, 1),
            "quiet_s": round(quiet_used, 1),
            "quiet_limit_s": quiet_limit,
            "broker": opts.broker,
            "workers": opts.workers,
            "worker_starts": [
                {"name": w.name, "pool": w.config.pool, "concurrency": w.config.concurrency} for w in workers.all
            ],
            "settings": {
                "lease_seconds": worker_settings.lease_seconds,
                "recover_interval": worker_settings.recover_interval,
                "recover_older_than": worker_settings.recover_older_than,
            },
            "cpu": cpu_name(),
            "cores": _cores(),
            "python": platform.python_version(),
            "submitted": {
                "jobs": len(submitted.specs),
                "items": sum(len(s.rows) for s in submitted.specs.values()),
                "by_kind": dict(submitted.by_kind),
                "cancelled_on_purpose": submitted.cancelled,
                "invalid_files_refused": submitted.refused_invalid,
                "invalid_files_accepted": submitted.accepted_invalid,
                "refused_during_outage": submitted.refused_by_outage,
                "models": sorted({s.model for s in submitted.specs.values()}),
                "tasks": sorted({s.task.value for s in submitted.specs.values()}),
            },
            "schedule": [{"at": f.at, "kind": f.kind} for f in plan],
            "faults": injector.summary(),
            "recoveries": recoveries(logs) | {"chunk_reruns": verdict.chunk_reruns, "item_reruns": verdict.item_reruns},
            "verdict": verdict.to_json(),
            "throughput_items_per_s": {"without_faults": clean, "with_faults": faulty},
            "tenants": {t: w for w, t in enumerate(TENANTS, start=1)},
            "small_job_longest_wait_s": longest_small_wait(sessions, submitted.specs),
        }
        summary["ok"] = verdict.ok and not submitted.accepted_invalid
    return summary


def _submit_until(
    client: Client,
    sessions: Any,
    models: Any,
    opts: Options,
    submitted: Submitted,
    t0: float,
    stop: threading.Event,
) -> None:
    """Submit jobs from the stream whenever fewer than ``opts.backlog`` items wait, cancel the ``cancel`` jobs
    when their time comes, until the run's duration has passed."""
    stream = job_stream(opts.seed, models, big_items=opts.big_items)
    pending: JobSpec | None = None
    cancels: list[tuple[float, str]] = []
    while time.monotonic() - t0 < opts.duration:
        now = time.monotonic()
        for due, job_id in [c for c in cancels if c[0] <= now]:
            cancels.remove((due, job_id))
            try:
                client.cancel(job_id)
                submitted.cancelled += 1
            except Exception as exc:
                log.warning("cancel %s: %s", job_id, exc)
        if _backlog(sessions) >= opts.backlog:
            time.sleep(0.5)
            continue
        spec = pending or next(stream)
        pending = None
        try:
            job_id = client.submit(
                spec.task, spec.model, spec.rows, chunk_size=spec.chunk_size, options=job_options(spec)
            ).job_id
        except InvalidInput:
            if spec.kind == "invalid":
                submitted.refused_invalid += 1
                submitted.by_kind[spec.kind] += 1
            else:
                raise
            continue
        except BrokerUnavailable as exc:
            stored = re.match(r"job ([0-9a-f]{32}) is stored", str(exc))
            if stored is None:
                submitted.refused_by_outage += 1
                pending = spec  # nothing stored: submit it again in a moment
                time.sleep(1)
                continue
            job_id = stored.group(1)  # stored, partly enqueued: the reconcilers enqueue the rest
        except DatabaseUnavailable:
            submitted.refused_by_outage += 1
            pending = spec
            time.sleep(1)
            continue
        if spec.kind == "invalid":
            submitted.accepted_invalid.append(spec.number)
        submitted.specs[job_id] = spec
        submitted.by_kind[spec.kind] += 1
        if spec.cancel_after is not None:
            cancels.append((time.monotonic() + spec.cancel_after, job_id))
    stop.set()


#: The soak's tenants, of weights 1, 2 and 3 (`_set_shares`): every job belongs to one, by its number.
TENANTS = ("soak-a", "soak-b", "soak-c")


def job_options(spec: JobSpec) -> JobOptions:
    """The job's tenant and priority, by its number alone (reproducible from the seed): tenants in turn, and
    priorities from 0 to 9."""
    return JobOptions(tenant=TENANTS[spec.number % len(TENANTS)], priority=(spec.number * 7) % 10)


def _set_shares(sessions: Any) -> None:
    with sessions.begin() as session:
        for weight, tenant in enumerate(TENANTS, start=1):
            set_share(session, tenant, weight=weight)


def longest_small_wait(sessions: Any, submitted: dict[str, JobSpec]) -> float | None:
    """Seconds the small job that waited longest for its first chunk waited (created to started; to finished when
    it never started, ended by a cancel or a fault's loss of nothing)."""
    small = [job_id for job_id, spec in submitted.items() if spec.kind == "small"]
    longest: float | None = None
    with sessions() as session:
        for job_id in small:
            job = session.get(Job, job_id)
            if job is None or (job.started_at or job.finished_at) is None:
                continue
            waited = ((job.started_at or job.finished_at) - job.created_at).total_seconds()
            longest = waited if longest is None else max(longest, waited)
    return None if longest is None else round(longest, 2)


def _backlog(sessions: Any) -> int:
    with sessions() as session:
        return int(
            session.scalar(
                select(func.coalesce(func.sum(Job.total - Job.succeeded - Job.failed), 0)).where(
                    Job.state.in_(UNFINISHED_JOB_STATES)
                )
            )
            or 0
        )


def _wait_all_finished(sessions: Any, job_ids: list[str], limit: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < limit:
        with sessions() as session:
            unfinished = session.scalar(
                select(func.count()).select_from(Job).where(Job.id.in_(job_ids), Job.state.not_in(FINISHED_JOB_STATES))
            )
        if not unfinished:
            break
        time.sleep(1)
    return time.monotonic() - start


def _throughput(sessions: Any, start: dt.datetime, end: dt.datetime) -> float | None:
    """Items that ended with a result or an error per second between ``start`` and ``end``."""
    seconds = (end - start).total_seconds()
    if seconds <= 0:
        return None
    with sessions() as session:
        n = session.scalar(
            select(func.count()).select_from(Result).where(Result.finished_at >= start, Result.finished_at < end)
        )
    return round((n or 0) / seconds, 1)


_REQUEUED = re.compile(r"re-enqueued \d+ chunk\(s\): (.*)")


def recoveries(logs: str) -> dict[str, Any]:
    """What the workers' logs say they recovered."""
    reasons: Counter[str] = Counter()
    for line in _REQUEUED.findall(logs):
        reasons.update(re.findall(r"\((\w+)\)", line))
    return {
        "reconciler_requeues": dict(reasons),
        "handed_back": logs.count("handed back to the broker"),
        "pool_process_lost": logs.count("WorkerLostError"),
        "transient_retries": len(re.findall(r"; retrying in \d+s", logs)),
    }


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _cores() -> int:
    return len(os.sched_getaffinity(0))


def render(summary: dict[str, Any]) -> str:
    v = summary["verdict"]
    s = summary["submitted"]
    f = summary["faults"]
    r = summary["recoveries"]
    t = summary["throughput_items_per_s"]
    lines = [
        f"soak {'PASSED' if summary['ok'] else 'FAILED'}: seed {summary['seed']}, {summary['duration_s']}s of faults"
        f" + {summary['quiet_s']}s quiet, broker {summary['broker']}, {summary['cpu']} ({summary['cores']} cores)",
        f"  submitted: {s['jobs']} jobs, {s['items']} items ({s['by_kind']}); invalid files refused"
        f" {s['invalid_files_refused']}, cancelled on purpose {s['cancelled_on_purpose']}",
        f"  items: {v['items_by_state']}; jobs: {v['jobs_by_state']}",
        f"  faults injected: {f['injected']} (skipped: {f['skipped']}); messages waiting when Redis restarted: "
        f"{f.get('messages_lost_in_redis_restarts', [])}",
        f"  recoveries: re-runs {r['chunk_reruns']} chunks / {r['item_reruns']} items; reconciler"
        f" {r['reconciler_requeues']}; handed back {r['handed_back']}; pool processes lost {r['pool_process_lost']};"
        f" transient retries {r['transient_retries']}",
        f"  lost {v['lost']}, duplicated {v['duplicated']}, changed {v['changed']}, stuck {v['stuck']},"
        f" wrong failures {v['wrong_failures']}, leftovers {v['leftovers']}, counter drift {v['counter_drift']},"
        f" unexplained attempts {v['unexplained_attempts']}",
        f"  results compared with the fault-free reference: {v['compared_with_reference']} (the reference ran"
        f" {v['reference_distinct_inputs_run']} distinct inputs)",
        f"  poison items failed {v['poison_failed']}; results kept by cancelled jobs {v['cancelled_kept_results']};"
        f" given up after {MAX_CHUNK_ATTEMPTS} claims {v['given_up']}",
        f"  throughput: {t['without_faults']} items/s without faults, {t['with_faults']} with faults",
        f"  small jobs: the longest waited {summary.get('small_job_longest_wait_s')} s for its first chunk"
        f" (tenants of weights {summary.get('tenants')}, priorities 0-9)",
    ]
    for kind, examples in v["problems"].items():
        lines.append(f"  {kind}: " + "; ".join(examples))
    return "\n".join(lines)


def write_json(summary: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n")
