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
    "squad": (TaskName.QUESTION_ANSWERING, {"arch": "distilbert", "max_length": 512}),
    "distilroberta": (TaskName.FILL_MASK, {"arch": "roberta"}),
    "conll03": (TaskName.TOKEN_CLASSIFICATION, {"arch": "bert", "lowercase": False}),
}

#: The seed document's question-answering examples: its SQuAD paragraph and its 🤗 Transformers paragraph.
SQUAD_CONTEXT = """
Extractive Question Answering is the task of extracting an answer from a text given a question. An example of a
question answering dataset is the SQuAD dataset, which is entirely based on that task. If you would like to fine-tune
a model on a SQuAD task, you may leverage the examples/pytorch/question-answering/run_squad.py script.
"""
TRANSFORMERS_CONTEXT = """
🤗 Transformers (formerly known as pytorch-transformers and pytorch-pretrained-bert) provides general-purpose
architectures (BERT, GPT-2, RoBERTa, XLM, DistilBert, XLNet…) for Natural Language Understanding (NLU) and Natural
Language Generation (NLG) with over 32+ pretrained models in 100+ languages and deep interoperability between
TensorFlow 2.0 and PyTorch.
"""
QA_EXAMPLES = [
    ("What is extractive question answering?", SQUAD_CONTEXT),
    ("What is a good example of a question answering dataset?", SQUAD_CONTEXT),
    ("How many pretrained models are available in 🤗 Transformers?", TRANSFORMERS_CONTEXT),
    ("What does 🤗 Transformers provide?", TRANSFORMERS_CONTEXT),
    ("🤗 Transformers provides interoperability between which frameworks?", TRANSFORMERS_CONTEXT),
]
#: The task summary's fill-mask sentence, with the model-independent placeholder.
FILL_MASK_EXAMPLE = "HuggingFace is creating a [[MASK]] that the community uses to solve NLP tasks."
NER_EXAMPLE = (
    "Hugging Face Inc. is a company based in New York City. Its headquarters are in DUMBO, therefore very "
    "close to the Manhattan Bridge which is visible from the window."
)


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
    """Run the seed examples (sentiment, paraphrase, question answering, fill-mask, entities) as jobs through a
    real worker and print the results."""
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
            [sys.executable, "-m", "inferq.cli", "worker", "--models", ",".join(SEED_MODELS), "--loglevel", "WARNING"],
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
                (
                    "extractive question answering (squad)",
                    client.submit(
                        "question_answering", "squad", [{"question": q, "context": c} for q, c in QA_EXAMPLES]
                    ),
                ),
                ("fill-mask (distilroberta)", client.submit("fill_mask", "distilroberta", [FILL_MASK_EXAMPLE])),
                (
                    "named entities (conll03)",
                    client.submit(
                        "token_classification", "conll03", [NER_EXAMPLE], params={"aggregation_strategy": "simple"}
                    ),
                ),
            ]
            for title, sub in jobs:
                click.echo(f"\n== {title}: job {sub.job_id}", err=True)
                status = _wait(client, sub.job_id, worker, log_path)
                click.echo(f"\n-- {title}: {status.state.value}, {status.succeeded}/{status.total} items")
                for row in client.results(sub.job_id):
                    click.echo(_describe(row, _input_text(client, sub.job_id, row.index)))
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


def _describe(row: Any, text: str) -> str:
    """One item as the seed document prints it."""
    if row.result is None:
        return f"  {text:<70.70}  {row.error}"
    task = row.task
    if task is TaskName.QUESTION_ANSWERING:
        a = row.result[0]
        return f"  Q: {text.split(' / ')[0]}\n     answer: {a['answer']!r}, score: {a['score']:.4f}, start: {a['start']}, end: {a['end']}"
    if task is TaskName.FILL_MASK:
        lines = [f"  {text}"]
        for mask in row.result:
            lines += [f"     {c['score']:.4f}  {c['token_str']!r:<16} {c['sequence']}" for c in mask]
        return "\n".join(lines)
    if task is TaskName.TOKEN_CLASSIFICATION:
        shown = 12
        lines = [f"  {text:.70}…"]
        lines += [
            f"     {e.get('entity_group', e.get('entity'))}: {e['word']!r} [{e['start']}:{e['end']}] {e['score']:.4f}"
            for e in row.result[:shown]
        ] or ["     (no entities)"]
        if len(row.result) > shown:
            lines.append(f"     … and {len(row.result) - shown} more")
        return "\n".join(lines)
    labels = ", ".join(f"{r['label']}: {r['score']:.4f}" for r in row.result)
    return f"  {text:<70.70}  {labels}"


def _input_text(client: Any, job_id: str, index: int) -> str:
    from inferq.schema import Item

    with client.reader() as session:
        item = session.get(Item, (job_id, index))
        data = item.input if item is not None else {}
    return " / ".join(" ".join(str(v).split()) for v in data.values())
