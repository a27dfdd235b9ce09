"""ZeroShotEngine against ``transformers.pipeline("zero-shot-classification")`` on tiny NLI models of three
families (BERT and DistilBERT WordPiece, RoBERTa byte-level BPE) and four label layouts (entailment last, first,
a two-label entailment/not_entailment head, and neutral in column 0, which the pipeline reads as contradiction).

Engines are loaded as a worker loads them (`ModelCache`), with a small token budget so that one line's
(text, hypothesis) pairs land in several micro-batches, mixed with other lines' pairs. Labels and their order must
equal the pipeline's (labels whose scores tie within `SCORE_TOLERANCE` may swap), scores within the tolerance.
"""

from __future__ import annotations

import functools
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inferq.errors import ModelLoadError
from inferq.task_specs import TaskName, read_params, validate_params
from tests.reference import assert_same_labels
from tests.support.engines import TinyEngines
from tests.support.engines import model_cache as cache_of
from tests.support.tiny_models import build_model, corpus
from worker.engines.base import Outcome
from worker.engines.zero_shot import ZeroShotEngine, entailment_id
from worker.model_cache import ModelCache

MAX_BATCH_TOKENS = 256
#: name → (arch, labels in id order, build keyword arguments).
MODELS: dict[str, tuple[str, tuple[str, ...], dict[str, Any]]] = {
    "nli-bert": ("bert", ("contradiction", "neutral", "entailment"), {"lowercase": False}),
    "nli-roberta": ("roberta", ("ENTAILMENT", "NEUTRAL", "CONTRADICTION"), {}),
    "nli-distilbert": ("distilbert", ("entailment", "not_entailment"), {}),
    # The pipeline takes column 0 as contradiction whatever its label: here, neutral
    "nli-bert-neutral-first": ("bert", ("neutral", "contradiction", "entailment"), {"seed": 1}),
}
TOPICS = ["sports", "politics", "programming", "cooking", "music"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models(tiny_engines: TinyEngines) -> dict[str, Path]:
    specs = {name: {"arch": arch, "labels": labels, **kw} for name, (arch, labels, kw) in MODELS.items()}
    return tiny_engines.models(TaskName.ZERO_SHOT_CLASSIFICATION, specs)


@pytest.fixture(scope="module")
def model_cache(models: dict[str, Path]) -> ModelCache:
    return cache_of(models, max_batch_tokens=MAX_BATCH_TOKENS, max_batch_size=16)


@functools.cache
def zero_shot_pipeline(path: str) -> Any:
    from transformers import pipeline

    return pipeline("zero-shot-classification", model=path, tokenizer=path, device="cpu")


def reference(path: Path, text: str, labels: list[str], **params: Any) -> list[dict[str, Any]]:
    out = zero_shot_pipeline(str(path))(text, candidate_labels=labels, **params)
    return [{"label": label, "score": score} for label, score in zip(out["labels"], out["scores"], strict=True)]


def lines() -> list[dict[str, Any]]:
    """Texts of every length (a few far past the 64-token maximum, so that only the text is cut), most taking the
    job's labels, others their own: one label, two, seven, labels with spaces and unicode."""
    rng = random.Random(3)
    sentences = list(corpus())
    own_labels = [
        ["science"],
        ["positive", "negative"],
        ["a question", "an instruction", "a statement", "a warning", "an example", "a definition", "a list"],
        ["café ☕", "naïve", "東京"],
        ["x", "y"],
    ]
    out: list[dict[str, Any]] = []
    for i in range(36):
        kind = rng.random()
        text = " ".join(rng.sample(sentences, 7)) if kind < 0.15 else "x" if kind < 0.18 else rng.choice(sentences)
        line: dict[str, Any] = {"text": text}
        if i % 3 == 1:
            line["candidate_labels"] = own_labels[i % len(own_labels)]
        out.append(line)
    return out


LINES = lines()


def run(
    model_cache: ModelCache, model: str, inputs: list[dict[str, Any]], **params: Any
) -> tuple[list[Outcome], dict[str, Any]]:
    engine = model_cache.engine(model, TaskName.ZERO_SHOT_CLASSIFICATION)
    stored = validate_params(TaskName.ZERO_SHOT_CLASSIFICATION, params)
    outcomes = engine.run(inputs, stored)
    assert all(o is not None and o.ok for o in outcomes), [o.error for o in outcomes if o is not None]
    return [o for o in outcomes if o is not None], stored


def check(
    path: Path, inputs: list[dict[str, Any]], outcomes: list[Outcome], stored: dict[str, Any], where: str
) -> None:
    for i, (line, o) in enumerate(zip(inputs, outcomes, strict=True)):
        labels = line.get("candidate_labels") or stored["candidate_labels"]
        want = reference(
            path,
            line["text"],
            labels,
            hypothesis_template=stored["hypothesis_template"],
            multi_label=stored["multi_label"],
        )
        assert_same_labels(o.result, want, where=f"{where}[{i}]")
        assert (o.label, o.score) == (o.result[0]["label"], o.result[0]["score"])
        if not stored["multi_label"] and len(labels) > 1:
            assert abs(sum(r["score"] for r in o.result) - 1.0) < 1e-5


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("multi_label", [False, True])
def test_labels_from_the_job_and_from_lines_match_the_pipeline(
    model: str, multi_label: bool, models: dict[str, Path], model_cache: ModelCache
) -> None:
    outcomes, stored = run(model_cache, model, LINES, candidate_labels=TOPICS, multi_label=multi_label)
    check(models[model], LINES, outcomes, stored, where=f"{model}/multi={multi_label}")


@pytest.mark.parametrize("model", ["nli-bert", "nli-roberta"])
def test_a_custom_template_and_labels_given_as_a_string_match_the_pipeline(
    model: str, models: dict[str, Path], model_cache: ModelCache
) -> None:
    inputs = [line for line in LINES if "candidate_labels" not in line][:15]
    outcomes, stored = run(
        model_cache, model, inputs, candidate_labels="sports, politics ,, programming", hypothesis_template="Topic: {}!"
    )
    assert stored["candidate_labels"] == ["sports", "politics", "programming"]
    check(models[model], inputs, outcomes, stored, where=model)


@pytest.mark.parametrize("model", list(MODELS))
def test_one_label_scores_entailment_against_contradiction_as_the_pipeline(
    model: str, models: dict[str, Path], model_cache: ModelCache
) -> None:
    inputs = [{"text": line["text"]} for line in LINES[:12]]
    outcomes, stored = run(model_cache, model, inputs, candidate_labels=["programming"])
    check(models[model], inputs, outcomes, stored, where=model)
    assert len({round(o.score, 6) for o in outcomes if o.score is not None}) > 1  # not all 1.0


@pytest.mark.parametrize("model", ["nli-bert", "nli-roberta"])
def test_a_hypothesis_longer_than_the_model_maximum_is_not_truncated_as_in_the_pipeline(
    model: str, models: dict[str, Path], model_cache: ModelCache
) -> None:
    # A label whose hypothesis alone exceeds 64 tokens: the tokenizer cannot cut only the text, and the pipeline
    # then tokenizes that pair without truncation; the other pairs are truncated as usual
    long_label = " ".join(["very long label"] * 30)
    inputs = [{"text": " ".join([s for s in corpus() if 80 < len(s) < 160][:3])}, {"text": "short text"}]
    outcomes, stored = run(model_cache, model, inputs, candidate_labels=["sports", long_label], multi_label=True)
    check(models[model], inputs, outcomes, stored, where=model)
    engine = model_cache.engine(model, TaskName.ZERO_SHOT_CLASSIFICATION)
    params = read_params(TaskName.ZERO_SHOT_CLASSIFICATION, stored)
    features = engine.preprocess(inputs, params)
    assert features.lengths.tolist()[0] == 64 and features.lengths.tolist()[1] > 64

    # A pair so long untruncated that it overflows the position table fails its line alone (the pipeline raises)
    inputs = [{"text": " ".join(corpus()[:40])}, *inputs]
    results = engine.run(inputs, params)
    assert results[0] is not None and results[0].error is not None and results[0].error.code == "inference_error"
    for i, (o, before) in enumerate(zip(results[1:], outcomes, strict=True)):
        assert o is not None and o.ok
        assert_same_labels(o.result, before.result, where=f"{model}[{i}]")


def test_each_text_and_label_pair_is_one_feature_in_the_token_budget_batches(
    models: dict[str, Path], model_cache: ModelCache
) -> None:
    engine = model_cache.engine("nli-roberta", TaskName.ZERO_SHOT_CLASSIFICATION)
    assert isinstance(engine, ZeroShotEngine)
    labels = [f"label number {i}" for i in range(40)]
    inputs = [{"text": " ".join(corpus()[:5]), "candidate_labels": labels}, {"text": "short"}]
    stored = validate_params(TaskName.ZERO_SHOT_CLASSIFICATION, {"candidate_labels": ["a", "b"]})
    features = engine.preprocess(inputs, read_params(TaskName.ZERO_SHOT_CLASSIFICATION, stored))
    assert features.item_of.tolist() == [0] * 40 + [1] * 2
    plan = engine.plan(features)
    assert sum(bool(np.any(features.item_of[rows] == 0)) for rows in plan) >= 3
    for rows in plan:
        assert len(rows) == 1 or len(rows) * int(features.lengths[rows].max()) <= MAX_BATCH_TOKENS
    outcomes, stored = run(model_cache, "nli-roberta", inputs, candidate_labels=["a", "b"])
    check(models["nli-roberta"], inputs, outcomes, stored, where="40 labels")


def test_entailment_and_contradiction_columns_are_the_pipelines(model_cache: ModelCache) -> None:
    columns = {}
    for name in MODELS:
        engine = model_cache.engine(name, TaskName.ZERO_SHOT_CLASSIFICATION)
        assert engine.entailment_id == zero_shot_pipeline(str(engine.loaded.source)).entailment_id  # type: ignore[attr-defined]
        columns[name] = (engine.entailment_id, engine.contradiction_id)  # type: ignore[attr-defined]
    assert columns == {
        "nli-bert": (2, 0),
        "nli-roberta": (0, 2),
        "nli-distilbert": (0, 1),
        "nli-bert-neutral-first": (2, 0),
    }
    assert entailment_id({"Neutral": 1, "EntailmentX": 0, "entailment": 2}) == 0
    assert entailment_id({"yes": 0, "no": 1}) is None


def test_a_model_without_an_entailment_label_is_refused(tmp_path: Path) -> None:
    path = build_model(
        tmp_path / "sst", TaskName.ZERO_SHOT_CLASSIFICATION, "distilbert", labels=["NEGATIVE", "POSITIVE"]
    )
    model_cache = cache_of({"sst": path})
    with pytest.raises(ModelLoadError, match=r"entailment label.*'NEGATIVE', 'POSITIVE'"):
        model_cache.engine("sst", TaskName.ZERO_SHOT_CLASSIFICATION)
