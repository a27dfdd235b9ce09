"""RerankEngine against sentence-transformers' ``CrossEncoder`` (``predict`` for the scores, ``rank`` for the order)
on tiny cross-encoders of three families (BERT and DistilBERT WordPiece, RoBERTa byte-level BPE), each saved the way
a real one is met: a sentence-transformers 6 save (activation in ``config_sentence_transformers.json``), a
sentence-transformers 4/5 save (activation in ``config.json``), a plain transformers checkpoint (no activation:
Sigmoid), and a save with a default query prompt and an activation CrossEncoder does not trust.

Engines are loaded as a worker loads them (`ModelCache`), with a small token budget so that one line's pairs
land in several micro-batches, mixed with other lines' pairs.
"""

from __future__ import annotations

import functools
import json
import math
import random
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from inferq.errors import ModelLoadError
from inferq.task_specs import TaskName, validate_params
from tests.reference import SCORE_TOLERANCE, assert_same_ranking
from tests.support.engines import TinyEngines
from tests.support.engines import model_cache as cache_of
from tests.support.tiny_models import build_config, build_model, build_tokenizer, corpus
from worker.engines.base import Outcome
from worker.engines.rerank import DEFAULT_ACTIVATION, RerankEngine, pairs_of, resolve_activation
from worker.model_cache import ModelCache

MAX_BATCH_TOKENS = 256
IDENTITY = "torch.nn.modules.linear.Identity"
#: name → (arch, build_cross_encoder keyword arguments, the activation CrossEncoder applies by default).
MODELS: dict[str, tuple[str, dict[str, Any], str]] = {
    "ce-bert": ("bert", {"lowercase": False}, DEFAULT_ACTIVATION),
    "ce-roberta": ("roberta", {"layout": "config", "activation": IDENTITY}, IDENTITY),
    "ce-distilbert": ("distilbert", {"layout": "transformers", "activation": None}, DEFAULT_ACTIVATION),
    "ce-bert-prompt": (
        "bert",
        {"activation": "my_package.Scaled", "prompts": {"query": "query: "}, "default_prompt_name": "query"},
        DEFAULT_ACTIVATION,
    ),
}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models(tiny_engines: TinyEngines) -> dict[str, Path]:
    return tiny_engines.models(TaskName.RERANK, {name: {"arch": arch, **kw} for name, (arch, kw, _) in MODELS.items()})


@pytest.fixture(scope="module")
def model_cache(models: dict[str, Path]) -> ModelCache:
    return cache_of(models, max_batch_tokens=MAX_BATCH_TOKENS, max_batch_size=16)


@functools.cache
def cross_encoder(path: str) -> Any:
    from sentence_transformers import CrossEncoder

    return CrossEncoder(path, device="cpu")


def lines() -> list[dict[str, Any]]:
    """Many queries with 1 to 60 documents each (short, ordinary, and far past the 64-token maximum, so that
    ``longest_first`` cuts the document, or the query when it is the longer), and single text/text_pair lines."""
    rng = random.Random(7)
    sentences = list(corpus())

    def document() -> str:
        kind = rng.random()
        if kind < 0.1:
            return rng.choice(["x", "ok", "Python", "héllo wörld 🙂", "   spaces   "])
        if kind < 0.25:
            return " ".join(rng.sample(sentences, 8))  # truncated
        return rng.choice(sentences)

    out: list[dict[str, Any]] = []
    for n in (1, 2, 3, 5, 8, 13, 21, 34, 60, 1, 7, 17, 4):
        query = rng.choice(sentences) if rng.random() < 0.8 else " ".join(rng.sample(sentences, 6))
        out.append({"query": query, "documents": [document() for _ in range(n)]})
    for _ in range(6):
        out.append({"text": rng.choice(sentences), "text_pair": document()})
    out.append({"query": "duplicates", "documents": ["same text", "other text", "same text"]})
    return out


LINES = lines()


def run(model_cache: ModelCache, model: str, inputs: list[dict[str, Any]], **params: Any) -> list[Outcome]:
    engine = model_cache.engine(model, TaskName.RERANK)
    outcomes = engine.run(inputs, validate_params(TaskName.RERANK, params))
    assert all(o is not None and o.ok for o in outcomes), [o.error for o in outcomes if o is not None]
    return [o for o in outcomes if o is not None]


def reference(path: Path, line: dict[str, Any], **params: Any) -> list[dict[str, Any]]:
    """``CrossEncoder.rank`` for the line, in the engine's keys."""
    query, documents = pairs_of(line)
    ranked = cross_encoder(str(path)).rank(query, documents, **params)
    renamed = {"corpus_id": "index", "score": "score", "text": "document"}
    return [{renamed[k]: (float(v) if k == "score" else v) for k, v in r.items()} for r in ranked]


@pytest.mark.parametrize("model", list(MODELS))
def test_scores_and_ranking_match_the_cross_encoder(
    model: str, models: dict[str, Path], model_cache: ModelCache
) -> None:
    # The activation CrossEncoder chose for the saved model is the engine's default
    ce = cross_encoder(str(models[model]))
    expected_activation = MODELS[model][2]
    assert f"{type(ce.activation_fn).__module__}.{type(ce.activation_fn).__name__}" == expected_activation
    assert model_cache.engine(model, TaskName.RERANK).default_activation == expected_activation  # type: ignore[attr-defined]

    outcomes = run(model_cache, model, LINES)

    # Every pair's score equals CrossEncoder.predict on all pairs at once
    pairs = [[q, d] for line in LINES for q, docs in [pairs_of(line)] for d in docs]
    want = ce.predict(pairs, batch_size=32)
    got = np.array([r["score"] for o in outcomes for r in sorted(o.result, key=lambda r: r["index"])])
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= SCORE_TOLERANCE
    # And every line's order equals CrossEncoder.rank's
    for i, (line, o) in enumerate(zip(LINES, outcomes, strict=True)):
        assert_same_ranking(o.result, reference(models[model], line), key=("index",), where=f"{model}[{i}]")
        assert o.score == o.result[0]["score"] and o.label is None
        assert len(o.result) == len(pairs_of(line)[1])


@pytest.mark.parametrize("model", ["ce-bert", "ce-roberta"])
@pytest.mark.parametrize(("top_k", "return_documents"), [(1, True), (5, False), (5, True), (None, True)])
def test_top_k_and_return_documents_match_rank(
    model: str, top_k: int | None, return_documents: bool, models: dict[str, Path], model_cache: ModelCache
) -> None:
    outcomes = run(model_cache, model, LINES, top_k=top_k, return_documents=return_documents)
    for i, (line, o) in enumerate(zip(LINES, outcomes, strict=True)):
        want = reference(models[model], line, top_k=top_k, return_documents=return_documents)
        assert_same_ranking(o.result, want, key=("index",), where=f"{model}[{i}]")
        assert all(("document" in r) == return_documents for r in o.result)
        if return_documents:
            docs = pairs_of(line)[1]
            assert all(r["document"] == docs[r["index"]] for r in o.result)


@pytest.mark.parametrize("model", ["ce-bert", "ce-roberta"])
@pytest.mark.parametrize("activation", ["none", "sigmoid"])
def test_activation_parameter_matches_rank_with_that_activation(
    model: str, activation: str, models: dict[str, Path], model_cache: ModelCache
) -> None:
    from torch import nn

    fn = nn.Identity() if activation == "none" else nn.Sigmoid()
    outcomes = run(model_cache, model, LINES, activation=activation, top_k=10)
    for i, (line, o) in enumerate(zip(LINES, outcomes, strict=True)):
        want = reference(models[model], line, top_k=10, activation_fn=fn)
        assert_same_ranking(o.result, want, key=("index",), where=f"{model}/{activation}[{i}]")
    scores = [r["score"] for o in outcomes for r in o.result]
    if activation == "sigmoid":
        assert all(0.0 < s < 1.0 for s in scores)
    elif model == "ce-bert":
        assert any(not 0.0 < s < 1.0 for s in scores)  # raw logits, not probabilities


def test_a_line_with_200_documents_is_200_features_split_across_micro_batches(
    models: dict[str, Path], model_cache: ModelCache
) -> None:
    # Given a line with 200 documents beside two small lines
    rng = random.Random(11)
    sentences = corpus()
    big = {"query": "How are exceptions raised?", "documents": [rng.choice(sentences) for _ in range(200)]}
    inputs = [LINES[0], big, LINES[2]]
    engine = model_cache.engine("ce-bert", TaskName.RERANK)
    assert isinstance(engine, RerankEngine)
    params = validate_params(TaskName.RERANK, {"top_k": 20})

    # When it is preprocessed and planned
    features = engine.preprocess(inputs, engine_params(params))
    plan = engine.plan(features)

    # Then each pair is a feature of its line, and the line's features go through several micro-batches, each
    # within the token budget
    assert len(features) == 1 + 200 + 3
    assert features.item_of.tolist() == [0] + [1] * 200 + [2] * 3
    big_batches = [rows for rows in plan if np.any(features.item_of[rows] == 1)]
    assert len(big_batches) >= 3
    for rows in plan:
        assert len(rows) == 1 or len(rows) * int(features.lengths[rows].max()) <= MAX_BATCH_TOKENS
    assert sorted(np.concatenate(plan).tolist()) == list(range(len(features)))

    # And the result equals CrossEncoder.rank
    outcomes = run(model_cache, "ce-bert", inputs, top_k=20)
    for i, (line, o) in enumerate(zip(inputs, outcomes, strict=True)):
        assert_same_ranking(o.result, reference(models["ce-bert"], line, top_k=20), key=("index",), where=str(i))


def engine_params(stored: dict[str, Any]) -> Any:
    from inferq.task_specs import read_params

    return read_params(TaskName.RERANK, stored)


def test_the_default_prompt_of_a_saved_cross_encoder_goes_before_the_query(model_cache: ModelCache) -> None:
    engine = model_cache.engine("ce-bert-prompt", TaskName.RERANK)
    assert engine.prompt == "query: "  # type: ignore[attr-defined]
    features = engine.preprocess([{"query": "q", "documents": ["d"]}], engine_params({}))
    assert features.input_ids[0] == engine.tokenizer("query: q", "d")["input_ids"]


def test_a_saved_max_seq_length_truncates_as_in_the_cross_encoder(models: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "short"
    shutil.copytree(models["ce-bert"], path)
    module = json.loads((path / "sentence_bert_config.json").read_text())
    (path / "sentence_bert_config.json").write_text(json.dumps({**module, "max_seq_length": 24}))
    model_cache = cache_of({"short": path}, max_batch_tokens=MAX_BATCH_TOKENS)
    outcomes = run(model_cache, "short", LINES[:8])
    assert max(model_cache.engine("short", TaskName.RERANK).preprocess(LINES[:8], engine_params({})).lengths) == 24
    for i, (line, o) in enumerate(zip(LINES, outcomes, strict=False)):
        assert_same_ranking(o.result, reference(path, line), key=("index",), where=f"short[{i}]")


# -- refused at load -------------------------------------------------------------------------------------


def test_a_model_with_more_than_one_label_is_refused(tmp_path: Path) -> None:
    path = build_model(tmp_path / "two", TaskName.RERANK, "bert", labels=["no", "yes"])
    model_cache = cache_of({"two": path})
    with pytest.raises(ModelLoadError, match=r"2 labels \(no, yes\).*CrossEncoder.rank refuses"):
        model_cache.engine("two", TaskName.RERANK)


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_an_embedding_checkpoint_without_a_classification_head_is_refused(arch: str, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModel

    # Given a bare encoder saved as an embedding model is (AutoModel, no sequence-classification head)
    tokenizer = build_tokenizer(arch)  # type: ignore[arg-type]
    torch.manual_seed(0)
    model = AutoModel.from_config(build_config(arch, len(tokenizer), max_length=64))  # type: ignore[arg-type]
    model.save_pretrained(tmp_path / "bare")
    tokenizer.save_pretrained(tmp_path / "bare")
    model_cache = cache_of({"bare": tmp_path / "bare"})

    # Then the model cache's head check refuses it instead of running a random head
    with pytest.raises(ModelLoadError, match=r"no rerank head .*classifier"):
        model_cache.engine("bare", TaskName.RERANK)


def test_a_cross_encoder_save_with_other_modules_is_refused(models: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "with-dense"
    shutil.copytree(models["ce-bert"], path)
    modules = json.loads((path / "modules.json").read_text())
    modules.append({"idx": 1, "name": "1", "path": "1_Dense", "type": "sentence_transformers.base.modules.Dense"})
    (path / "modules.json").write_text(json.dumps(modules))
    model_cache = cache_of({"m": path})
    with pytest.raises(ModelLoadError, match="not one sequence-classification Transformer module"):
        model_cache.engine("m", TaskName.RERANK)


# -- the activation CrossEncoder would choose ------------------------------------------------------------


@pytest.mark.parametrize(
    ("st_config", "config", "want"),
    [
        ({}, {}, DEFAULT_ACTIVATION),
        ({"activation_fn": IDENTITY}, {"sentence_transformers": {"activation_fn": "torch.nn.Tanh"}}, IDENTITY),
        ({"activation_fn": None}, {"sentence_transformers": {"activation_fn": IDENTITY}}, IDENTITY),
        ({"activation_fn": "my.Custom"}, {"sentence_transformers": {"activation_fn": IDENTITY}}, IDENTITY),
        ({}, {"sbert_ce_default_activation_function": IDENTITY}, IDENTITY),
        # The newer key wins over the older one, even when CrossEncoder does not trust it
        (
            {},
            {"sentence_transformers": {"activation_fn": "my.Custom"}, "sbert_ce_default_activation_function": IDENTITY},
            DEFAULT_ACTIVATION,
        ),
        ({}, {"sbert_ce_default_activation_function": "my.Custom"}, DEFAULT_ACTIVATION),
    ],
)
def test_default_activation_is_the_one_cross_encoder_chooses(
    st_config: dict[str, Any], config: dict[str, Any], want: str
) -> None:
    assert resolve_activation(st_config, SimpleNamespace(**config)) == want


def test_scores_are_floats_and_ties_keep_document_order(model_cache: ModelCache) -> None:
    # The same document three times scores the same (within float noise): the earlier comes first, as in rank
    outcomes = run(model_cache, "ce-roberta", [{"query": "q", "documents": ["a b", "a b", "a b"]}])
    result = outcomes[0].result
    assert all(isinstance(r["score"], float) for r in result)
    if math.isclose(result[0]["score"], result[-1]["score"], abs_tol=0.0):
        assert [r["index"] for r in result] == [0, 1, 2]
