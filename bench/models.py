"""The benchmark's models: DistilBERT at its real base size (6 layers, width 768, 12 heads, 66M parameters) with
random weights, built locally by `worker.tiny_models.build_model` and kept in a cache directory between runs.

The WordPiece vocabulary is trained on the corpus and holds ~5,300 tokens, not the real 30,522: the corpus has
no more distinct pieces. The embedding table is the only part that this shrinks (4M instead of 23M parameters, a
lookup), so the speed per token is that of the real model; texts come out slightly longer in tokens than with
the real vocabulary (more word pieces per word)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from inferq.tasks import TaskName

log = logging.getLogger(__name__)

#: Asked of the WordPiece trainer; the corpus yields ~5,300.
VOCAB_SIZE = 8000

#: DistilBERT's real maximum length: ``truncation=True`` cuts there.
MAX_LENGTH = 512

#: Bump to rebuild cached models when the recipe changes.
RECIPE_VERSION = 1


@dataclass(frozen=True)
class BenchModel:
    name: str
    task: TaskName
    path: Path


#: Registry name → task of each benchmark model.
MODELS: dict[str, TaskName] = {
    "bench-cls": TaskName.CLASSIFICATION,
    "bench-qa": TaskName.QUESTION_ANSWERING,
    "bench-mlm": TaskName.FILL_MASK,
}


def ensure_model(root: Path, name: str) -> BenchModel:
    """The model ``name`` under ``root``, built on first use (a few seconds each at base size)."""
    from worker.tiny_models import build_model

    task = MODELS[name]
    path = root / name
    recipe = {"version": RECIPE_VERSION, "task": task.value, "vocab_size": VOCAB_SIZE, "max_length": MAX_LENGTH}
    marker = path / "bench-recipe.json"
    if not (marker.exists() and json.loads(marker.read_text()) == recipe):
        log.info("building %s (distilbert base, random weights) in %s", name, path)
        build_model(path, task, "distilbert", size="base", vocab_size=VOCAB_SIZE, max_length=MAX_LENGTH, seed=0)
        marker.write_text(json.dumps(recipe))
    return BenchModel(name, task, path)


def registry_json(models: list[BenchModel], precisions: tuple[str, ...] = ("bf16", "int8")) -> str:
    """``INFERQ_MODELS`` for the worker: each model at fp32 under its name, and at each reduced precision under
    ``NAME@PRECISION`` (same directory)."""
    entries: dict[str, dict[str, str]] = {}
    for m in models:
        entries[m.name] = {"source": str(m.path), "task": m.task.value}
        for p in precisions:
            entries[f"{m.name}@{p}"] = {"source": str(m.path), "task": m.task.value, "precision": p}
    return json.dumps(entries)
