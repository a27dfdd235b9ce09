"""What the soak submits: tiny models built locally, and a stream of job specs drawn from the seed."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from inferq.task_specs import TaskName
from inferq_demo.stand_ins import build_model, corpus

#: Rows kept in the poison model's embedding table (its tokenizer has 2,000 tokens): a text holding a token id
#: beyond it makes the forward pass raise (IndexError), as a corrupt or mismatched checkpoint does.
POISON_EMBEDDINGS = 1000

Kind = Literal["small", "big", "poison", "cancel", "invalid"]

#: One round of the job stream, shuffled: every kind comes in the first round, small jobs most often.
ROUND: tuple[Kind, ...] = ("small", "small", "small", "small", "big", "big", "poison", "cancel", "invalid")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    task: TaskName
    path: Path


@dataclass
class Models:
    """The soak's registry (name → model), and which texts poison the poison model."""

    models: dict[str, ModelInfo]
    clean_texts: list[str]
    poison_texts: list[str]

    def registry(self) -> dict[str, Any]:
        return {m.name: {"source": str(m.path), "task": m.task.value} for m in self.models.values()}


def build_models(root: Path) -> Models:
    """Two classifiers (DistilBERT, RoBERTa), an embedding model (BERT), an NER model (BERT) and the poison
    classifier, all tiny, with random weights, built here (no hub)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    specs: dict[str, tuple[TaskName, dict[str, Any]]] = {
        "cls-distilbert": (TaskName.CLASSIFICATION, {"arch": "distilbert", "initializer_range": 0.3}),
        "cls-roberta": (
            TaskName.CLASSIFICATION,
            {"arch": "roberta", "labels": ["NEGATIVE", "NEUTRAL", "POSITIVE"], "initializer_range": 0.3},
        ),
        "emb-bert": (TaskName.EMBEDDING, {"arch": "bert", "initializer_range": 0.3}),
        "ner-bert": (TaskName.TOKEN_CLASSIFICATION, {"arch": "bert", "lowercase": False, "initializer_range": 0.5}),
        "poison": (TaskName.CLASSIFICATION, {"arch": "distilbert", "seed": 1}),
    }
    models = {name: ModelInfo(name, task, build_model(root / name, task, **kw)) for name, (task, kw) in specs.items()}
    poison_path = models["poison"].path
    model = AutoModelForSequenceClassification.from_pretrained(poison_path)
    model.resize_token_embeddings(POISON_EMBEDDINGS)
    model.save_pretrained(poison_path)
    tokenizer = AutoTokenizer.from_pretrained(poison_path)
    clean: list[str] = []
    poison: list[str] = []
    for text in corpus():
        ids = tokenizer(text, truncation=True)["input_ids"]
        (clean if max(ids) < POISON_EMBEDDINGS else poison).append(text)
    return Models(models, clean, poison)


@dataclass
class JobSpec:
    """One submission: its inputs (a list of rows) and what the verdict must find."""

    number: int
    kind: Kind
    model: str
    task: TaskName
    rows: list[dict[str, Any]]
    chunk_size: int | None = None
    #: Indices of the items that must fail (poison texts).
    poison: set[int] = field(default_factory=set)
    #: Seconds after submitting that the job is cancelled (``cancel`` jobs).
    cancel_after: float | None = None


def job_stream(seed: int, models: Models, *, big_items: tuple[int, int] = (200, 1200)) -> Any:
    """An endless, reproducible stream of `JobSpec` (a generator): the n-th spec depends on the seed alone."""
    rng = random.Random(f"jobs-{seed}")
    texts = list(corpus())
    round_: list[Kind] = []
    plain = [m for m in models.models.values() if m.name != "poison"]
    number = 0
    while True:
        if not round_:
            round_ = list(ROUND)
            rng.shuffle(round_)
        kind = round_.pop()
        model = rng.choice(plain)
        chunk_size: int | None = None
        poison: set[int] = set()
        cancel_after = None
        if kind == "small":
            n = rng.randint(1, 24)
            rows = _rows(rng, texts, n, number)
        elif kind in ("big", "cancel"):
            n = rng.randint(*big_items)
            chunk_size = rng.choice([32, 64, 100, 256])
            rows = _rows(rng, texts, n, number)
            if kind == "cancel":
                cancel_after = rng.uniform(0.5, 8.0)
        elif kind == "poison":
            model = models.models["poison"]
            n = rng.randint(20, 300)
            chunk_size = rng.choice([16, 50, 128])
            rows = _rows(rng, models.clean_texts, n, number)
            for index in rng.sample(range(n), k=max(1, n // 40)):
                rows[index]["text"] = rng.choice(models.poison_texts)
                poison.add(index)
        else:  # invalid: a file with one bad line among good ones, which must be refused whole
            n = rng.randint(5, 200)
            rows = _rows(rng, texts, n, number)
            bad = rng.randrange(n)
            rows[bad] = rng.choice([{"txt": "no text field"}, {"text": 42}, {"text": ""}, {"text": None}])
        yield JobSpec(number, kind, model.name, model.task, rows, chunk_size, poison, cancel_after)
        number += 1


def _rows(rng: random.Random, texts: list[str], n: int, number: int) -> list[dict[str, Any]]:
    start = rng.randrange(len(texts))
    return [{"text": texts[(start + i) % len(texts)], "id": f"j{number}-{i}"} for i in range(n)]
