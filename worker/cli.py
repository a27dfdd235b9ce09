"""``inferq worker``: a Celery worker that holds models on one device."""

from __future__ import annotations

import logging
import os
from typing import Any

import click


@click.command("worker")
@click.option("--device", default=None, help="cpu or cuda:N (default: INFERQ_DEVICE, else cpu).")
@click.option("--models", default="", help="Comma-separated models to preload (registry names or directories).")
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(1),
    default=None,
    help="Pool processes (prefork) or threads (default: 1 on a CPU; 3 threads on a GPU, sharing one model).",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "bf16", "int8", "auto"]),
    default=None,
    help="Run every model at this precision (default: each model's registry setting).",
)
@click.option(
    "--backend",
    type=click.Choice(["auto", "torch", "ctranslate2"]),
    default=None,
    help="Run every model on this backend where it can (default: each model's registry setting; see worker.backends).",
)
@click.option("--queues", "-Q", default="", help="Extra queues to consume, comma-separated.")
@click.option(
    "--pool",
    default=None,
    type=click.Choice(["prefork", "solo", "threads"]),
    help="Celery pool (default: prefork on a CPU, threads on a GPU).",
)
@click.option("--loglevel", "-l", default=None, help="Log level (default: INFERQ_LOG_LEVEL).")
@click.option("--hostname", "-n", default=None, help="Celery node name.")
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Serve Prometheus metrics on this port, at /metrics (default: INFERQ_METRICS_PORT, else none).",
)
@click.option(
    "--webhooks/--no-webhooks",
    default=True,
    help="Start a webhook sender beside this worker (default), or leave webhooks to a separate "
    "`inferq worker --webhooks-only`.",
)
@click.option(
    "--webhooks-only",
    is_flag=True,
    help="Only send webhooks: consume the webhook queue with INFERQ_WEBHOOK_CONCURRENCY processes, load no model.",
)
@click.option("--parent-pid", type=int, default=None, hidden=True, help="Stop when this process has gone.")
@click.option("--ready-fd", type=int, default=None, hidden=True, help="Write a byte here once consuming.")
def worker_command(
    device: str | None,
    models: str,
    concurrency: int | None,
    precision: str | None,
    backend: str | None,
    queues: str,
    pool: str | None,
    loglevel: str | None,
    hostname: str | None,
    metrics_port: int | None,
    webhooks: bool,
    webhooks_only: bool,
    parent_pid: int | None,
    ready_fd: int | None,
) -> None:
    """Run a worker: consume the default queue and the queues of the models it preloads. Webhooks are sent by a
    second Celery worker process that this one starts and stops (``--webhooks-only``), so that no receiver, however
    slow, holds a process that runs chunks."""
    from inferq.model_sources import resolve_model
    from inferq.settings import Settings
    from worker.threads import default_pool

    options: dict[str, Any] = {}
    if device:
        if device.startswith("cuda:"):
            # Pin this process (and its children) to one GPU before torch touches CUDA.
            os.environ["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]
            device = "cuda:0"
        options["device"] = device
    if precision:
        options["precision"] = precision
    if backend:
        options["backend"] = backend
    if metrics_port is not None:
        options["metrics_port"] = metrics_port
    names = [m.strip() for m in models.split(",") if m.strip()]
    if names:
        options["preload"] = names
    if webhooks_only:
        # No model, no port of its own: the worker beside it serves the metrics.
        options.update(preload=[], metrics_port=None)
    # The environment's settings with these options over them; the pool processes inherit them when they fork.
    settings = Settings(**options)
    sender: list[str] | None = None
    if webhooks_only:
        # Prefork, so that the delivery task's hard time limit is enforced (a thread cannot be killed).
        pool, concurrency = "prefork", concurrency or settings.webhook_concurrency
        consume = [settings.webhook_queue]
        if not hostname:
            hostname = f"webhooks-{os.getpid()}@%h"
    else:
        pool, concurrency = default_pool(settings.device, pool, concurrency)
        # Chunks only: webhooks have a queue and a process of their own (`sender`), so that a slow receiver never
        # delays a chunk, and an event never waits behind a backlog of chunks.
        consume = [settings.default_queue]
        if webhooks:
            sender = ["worker", "--webhooks-only", "--parent-pid", str(os.getpid())]
            if loglevel:
                sender += ["--loglevel", loglevel]
            if hostname:
                sender += ["--hostname", f"webhooks-{hostname}"]
    for name in settings.preload:
        queue = settings.queue_of(resolve_model(settings, name))
        if queue not in consume:
            consume.append(queue)
    consume += [q.strip() for q in queues.split(",") if q.strip() and q.strip() not in consume]

    from inferq import logs
    from worker.app import run_worker

    argv = [
        "worker",
        "--queues",
        ",".join(consume),
        "--concurrency",
        str(concurrency),
        "--pool",
        pool,
        "--loglevel",
        loglevel or settings.log_level,
        "--without-gossip",
        "--without-mingle",
    ]
    if hostname:
        argv += ["--hostname", hostname]
    if settings.log_format == "json":
        # Celery's banner is text, and so are warnings given before Celery sets its logging up: without the one,
        # and with the others logged as JSON from now on, every line a JSON worker writes is a JSON object.
        argv.insert(0, "--quiet")
        logs.configure("json", settings.log_level)
        logging.captureWarnings(True)
    run_worker(
        settings, argv, webhook_sender=sender, webhooks_only=webhooks_only, parent_pid=parent_pid, ready_fd=ready_fd
    )
