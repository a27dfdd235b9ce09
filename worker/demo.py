"""``inferq demo``: the seed document's examples as real jobs on the embedded default (or whatever the settings
name), through a real worker process, with a progress bar and a results table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from inferq.settings import ModelSpec, Settings, get_settings
from inferq.tasks import TaskName

#: Where the demo keeps its locally built models.
DEMO_DIR = Path(".inferq-demo")

SEQUENCE_0 = "The company HuggingFace is based in New York City"
SEQUENCE_1 = "Apples are especially bad for your health"
SEQUENCE_2 = "HuggingFace's headquarters are situated in Manhattan"

#: (registry name, task, architecture and labels of the stand-in built when the real model is unavailable)
SEED_MODELS: dict[str, tuple[TaskName, dict[str, Any]]] = {
    "sst2": (TaskName.CLASSIFICATION, {"arch": "distilbert", "labels": ["NEGATIVE", "POSITIVE"]}),
    "mrpc": (TaskName.CLASSIFICATION, {"arch": "bert", "labels": ["not paraphrase", "is paraphrase"]}),
}


def _available(source: str) -> bool:
    """Whether the model is a local directory, is in the local cache, or the hub answers for it."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(source, local_files_only=True, trust_remote_code=False)
        return True
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE") or not _hub_reachable():
        return False
    try:
        AutoConfig.from_pretrained(source, trust_remote_code=False)
        return True
    except Exception:
        return False


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connection to the hub's host, so that a machine without network says so at once."""
    import socket
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def demo_models(settings: Settings, workdir: Path) -> dict[str, ModelSpec]:
    """The seed models where they can be had; otherwise small local stand-ins, said so in one line each."""
    from worker.tiny_models import build_model

    chosen: dict[str, ModelSpec] = {}
    for name, (task, build) in SEED_MODELS.items():
        spec = settings.models.get(name)
        if spec is not None and _available(spec.source):
            chosen[name] = spec
            continue
        source = spec.source if spec else name
        path = workdir / "models" / name
        if not (path / "config.json").exists():
            build_model(path, task, initializer_range=0.3, **build)
        click.echo(
            f"{name}: {source} is not reachable (no hub access, not in the local cache); "
            f"using a small locally built model with RANDOM weights instead ({path})",
            err=True,
        )
        chosen[name] = ModelSpec(source=str(path.resolve()), task=task, description="demo stand-in, random weights")
    return chosen


@click.command("demo")
@click.option("--keep-worker", is_flag=True, help="Leave the demo's worker running afterwards.")
def demo_command(keep_worker: bool) -> None:
    """Run the seed examples (sentiment, paraphrase) as jobs through a real worker and print the results."""
    from inferq import migrate
    from producer.client import Client

    base = get_settings()
    DEMO_DIR.mkdir(exist_ok=True)
    models = {**base.models, **demo_models(base, DEMO_DIR)}
    settings = base.model_copy(update={"models": models})
    env = {
        **os.environ,
        "INFERQ_MODELS": json.dumps({k: v.model_dump(mode="json") for k, v in models.items()}),
        "PYTHONUNBUFFERED": "1",
    }
    click.echo(f"database {settings.database_url}  broker {settings.broker_url}", err=True)
    migrate.upgrade(settings)
    log_path = DEMO_DIR / "worker.log"
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "inferq.cli", "worker", "--models", "sst2,mrpc", "--loglevel", "WARNING"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        with Client(settings) as client:
            jobs = [
                ("sentiment (sst2)", client.submit("classification", "sst2", ["I hate you", "I love you"])),
                (
                    "paraphrase (mrpc)",
                    client.submit(
                        "classification",
                        "mrpc",
                        [
                            {"text": SEQUENCE_0, "text_pair": SEQUENCE_2, "id": "paraphrase"},
                            {"text": SEQUENCE_0, "text_pair": SEQUENCE_1, "id": "not paraphrase"},
                        ],
                        params={"top_k": None},
                    ),
                ),
            ]
            for title, sub in jobs:
                click.echo(f"\n== {title}: job {sub.job_id}", err=True)
                status = _wait(client, sub.job_id, worker, log_path)
                click.echo(f"-- {title}: {status.state.value}, {status.succeeded}/{status.total} items")
                for row in client.results(sub.job_id):
                    text = _input_text(client, sub.job_id, row.index)
                    labels = ", ".join(f"{r['label']}: {r['score']:.4f}" for r in row.result or [])
                    click.echo(f"  {text:<70.70}  {labels or row.error}")
    finally:
        if not keep_worker:
            worker.terminate()
            worker.wait(timeout=60)


def _wait(client: Any, job_id: str, worker: subprocess.Popen[bytes], log_path: Path) -> Any:
    from producer.cli import ProgressBar

    bar = ProgressBar()
    deadline = time.monotonic() + 600
    while True:
        status = client.status(job_id)
        bar(status)
        if status.finished:
            return status
        if worker.poll() is not None:
            raise click.ClickException(f"the demo worker exited; its log:\n{log_path.read_text(errors='replace')}")
        if time.monotonic() > deadline:
            raise click.ClickException("the demo job did not finish in 10 minutes")
        time.sleep(0.3)


def _input_text(client: Any, job_id: str, index: int) -> str:
    from inferq.schema import Item

    with client.reader() as session:
        item = session.get(Item, (job_id, index))
        data = item.input if item is not None else {}
    return " / ".join(str(v) for v in data.values())
