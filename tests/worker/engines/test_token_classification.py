"""TokenClassificationEngine against ``transformers.pipeline("token-classification")`` on tiny local models of
three families (BERT and DistilBERT WordPiece, RoBERTa byte-level BPE), for every aggregation strategy.

Every item is compared with the pipeline called on the same model directory with the same
``aggregation_strategy``/``ignore_labels``: entities, words, starts, ends and indices must be equal, scores within
`SCORE_TOLERANCE`. Batching with padding moves probabilities by a few 1e-6, which could flip an argmax only where
two labels tie; the inputs are checked to have no tie (the pipeline's own top two probabilities of every token are
more than `TIE` apart), so nothing is forgiven.
"""

from __future__ import annotations

import functools
import json
import math
import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from inferq.task_specs import TaskName, read_params, validate_params
from tests.support.engines import TinyEngines, model_cache
from tests.support.tiny_models import Arch, corpus
from worker.engines.base import Outcome
from worker.engines.batching import plan_batches
from worker.engines.token_classification import TokenClassificationEngine, mean_score
from worker.model_cache import ModelCache

SCORE_TOLERANCE = 1e-5
#: Labels whose probabilities are within this of each other tie (an argmax between them may go either way): the
#: noise the score comparison allows, above what padding changes here (at most 8.2e-6, the three models).
TIE = SCORE_TOLERANCE
ARCHS: tuple[Arch, ...] = ("bert", "roberta", "distilbert")
STRATEGIES = ("none", "simple", "first", "average", "max")
MAX_BATCH_TOKENS = 512
MAX_LENGTH = 64

UNICODE_TEXTS = [
    "héllo wörld, naïve café 🙂 and 🚀🚀 too",
    "   lots     of         spaces   ",
    "日本語のテキスト and 中文 mixed in",
    "emoji 👩‍👩‍👧‍👦 family ZWJ and flags 🇫🇷🇩🇪",
    "ﬁnance ligature Ⅻ ², x µ Ω ß",
    "tabs\tand\nnewlines\r\n here",
    "Guido van Rossum created Python at CWI in Amsterdam.",
    "   ",
    "x",
]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def token_classification_dirs(tiny_engines: TinyEngines) -> dict[str, Path]:
    specs = {arch: {"arch": arch, "max_length": MAX_LENGTH, "initializer_range": 0.5} for arch in ARCHS}
    return tiny_engines.models(TaskName.TOKEN_CLASSIFICATION, specs)


@pytest.fixture(scope="session")
def token_classification_cache(token_classification_dirs: dict[str, Path]) -> ModelCache:
    return model_cache(token_classification_dirs, precision="fp32", max_batch_tokens=MAX_BATCH_TOKENS)


@functools.cache
def _pipeline(path: str) -> Any:
    from transformers import pipeline

    return pipeline("token-classification", model=path, tokenizer=path, device="cpu")


@functools.cache
def texts() -> tuple[str, ...]:
    """Real sentences (a few of them longer than the model's maximum length), and unicode, emoji and spaces."""
    rng = random.Random(7)
    return (*rng.sample(corpus(), 100), *UNICODE_TEXTS)


class Model:
    def __init__(self, model_cache: ModelCache, dirs: dict[str, Path], arch: str) -> None:
        self.arch = arch
        engine = model_cache.engine(arch, TaskName.TOKEN_CLASSIFICATION)
        assert isinstance(engine, TokenClassificationEngine)
        self.engine = engine
        self.pipe = _pipeline(str(dirs[arch].resolve()))

    def run(self, inputs: Sequence[str], **raw: Any) -> tuple[list[Outcome], dict[str, Any]]:
        params = validate_params(TaskName.TOKEN_CLASSIFICATION, raw)
        outcomes = self.engine.run([{"text": t} for t in inputs], params)
        assert all(o is not None for o in outcomes)
        return [o for o in outcomes if o is not None], params

    def reference(self, text: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        return list(
            self.pipe(text, aggregation_strategy=params["aggregation_strategy"], ignore_labels=params["ignore_labels"])
        )

    def min_top_two_gap(self, inputs: Sequence[str]) -> float:
        """The smallest difference between the two best labels' probabilities of any token the engine runs (each
        text cut at `MAX_LENGTH`, as the engine cuts it), as the pipeline computes them (one unpadded text at a
        time). Tokens past the cut do not count: a near tie there (2^-20 on one CPU) decides nothing."""
        import torch

        tokenizer, model = self.engine.tokenizer, self.engine.model
        smallest = math.inf
        with torch.inference_mode():
            for text in inputs:
                enc = tokenizer(text, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
                probs = model(**enc).logits[0].float().softmax(-1)
                top = probs.topk(2, dim=-1).values
                smallest = min(smallest, float((top[:, 0] - top[:, 1]).min()))
        return smallest


@pytest.fixture(scope="session")
def models(token_classification_cache: ModelCache, token_classification_dirs: dict[str, Path]) -> dict[str, Model]:
    return {arch: Model(token_classification_cache, token_classification_dirs, arch) for arch in ARCHS}


# -- comparison ----------------------------------------------------------------------------------------


def assert_same_entities(got: list[dict[str, Any]], want: list[dict[str, Any]], where: str) -> None:
    assert len(got) == len(want), f"{where}: {len(got)} entities, pipeline has {len(want)}:\n{got}\n{want}"
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert list(g) == list(w), f"{where}[{i}]: keys {list(g)} != {list(w)}"
        assert type(g["score"]) is float, f"{where}[{i}]: score is {type(g['score'])}"
        for key in ("start", "end", "index"):
            if key in g:
                assert type(g[key]) is int, f"{where}[{i}]: {key} is {type(g[key])}"
        assert {k: v for k, v in g.items() if k != "score"} == {k: v for k, v in w.items() if k != "score"}, (
            f"{where}[{i}]: {g} != {w}"
        )
        assert math.isclose(g["score"], float(w["score"]), rel_tol=0, abs_tol=SCORE_TOLERANCE), (
            f"{where}[{i}]: {g} != {w}"
        )


def assert_parity(model: Model, inputs: Sequence[str], **raw: Any) -> list[Outcome]:
    outcomes, params = model.run(inputs, **raw)
    assert len(outcomes) == len(inputs)
    key = "entity" if params["aggregation_strategy"] == "none" else "entity_group"
    for i, (text, outcome) in enumerate(zip(inputs, outcomes, strict=True)):
        where = f"{model.arch} {params['aggregation_strategy']} item {i} {text[:50]!r}"
        assert outcome.ok, f"{where}: {outcome.error!r}"
        got = outcome.result
        assert got is not None
        assert_same_entities(got, model.reference(text, params), where)
        # Typed columns: the count, and the best entity
        assert outcome.entity_count == len(got)
        if got:
            best = max(got, key=lambda e: e["score"])
            assert (outcome.label, outcome.score) == (best[key], best["score"])
        else:
            assert (outcome.label, outcome.score) == (None, None)
        json.dumps(got)
    return outcomes


# -- tests ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_inputs_are_a_fair_test(models: dict[str, Model], arch: str) -> None:
    # Given the test texts and the model
    model = models[arch]
    inputs = texts()
    params = validate_params(TaskName.TOKEN_CLASSIFICATION, {})

    # When they are tokenized and planned
    features = model.engine.preprocess(
        [{"text": t} for t in inputs], read_params(TaskName.TOKEN_CLASSIFICATION, params)
    )
    batches = plan_batches(features.lengths, MAX_BATCH_TOKENS, model.engine.loaded.max_batch_size)

    # Then they span several micro-batches, some are cut at the maximum length, and no token's two best labels
    # nearly tie (so that padding noise cannot flip an argmax and strict comparison is fair)
    assert len(batches) > 1
    assert int(features.lengths.max()) == MAX_LENGTH
    assert len(model.engine.tokenizer(max(inputs, key=len))["input_ids"]) > MAX_LENGTH
    assert model.min_top_two_gap(inputs) > TIE


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("arch", ARCHS)
def test_matches_pipeline(models: dict[str, Model], arch: str, strategy: str) -> None:
    # Given real sentences and unicode/emoji/space-run texts
    model = models[arch]
    inputs = texts()

    # When the engine classifies their tokens with the strategy (ignore_labels default ["O"])
    outcomes = assert_parity(model, inputs, aggregation_strategy=strategy)

    # Then every item matched the pipeline (checked above), and the data is not trivial: many entities, of
    # several labels, "O" filtered out, and (when aggregating) entities of several tokens
    entities = [e for o in outcomes for e in o.result or []]
    key = "entity" if strategy == "none" else "entity_group"
    labels = Counter(e[key] for e in entities)
    assert len(entities) >= 300, len(entities)
    assert len(labels) >= 3 and "O" not in labels, labels
    assert sum(1 for o in outcomes if o.entity_count) >= 100
    if strategy != "none":
        assert any(e["end"] - e["start"] > len(e["word"].split(" ")[0]) + 1 for e in entities)


@pytest.mark.parametrize("strategy", ["none", "simple", "average"])
@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_ignore_labels_match_pipeline(models: dict[str, Model], arch: str, strategy: str) -> None:
    # Given a subset of the texts
    model = models[arch]
    inputs = texts()[::4]

    # When nothing is ignored, and when some entity labels are ignored too
    keep_all = assert_parity(model, inputs, aggregation_strategy=strategy, ignore_labels=[])
    fewer = assert_parity(model, inputs, aggregation_strategy=strategy, ignore_labels=["O", "B-PER", "I-LOC", "LOC"])

    # Then the results matched the pipeline (checked above); with nothing ignored every token is an entity (or
    # part of one), and ignoring labels drops entities
    key = "entity" if strategy == "none" else "entity_group"
    if strategy == "none":
        tokens = [len(model.engine.tokenizer(t, truncation=True)["input_ids"]) - 2 for t in inputs]
        assert [o.entity_count for o in keep_all] == tokens
    assert sum(o.entity_count or 0 for o in fewer) < sum(o.entity_count or 0 for o in keep_all)
    assert not any(e[key] in ("O", "B-PER", "I-LOC", "LOC") for o in fewer for e in o.result or [])


def test_empty_input_list(models: dict[str, Model]) -> None:
    # Given no inputs / When the engine runs / Then it returns no outcomes
    outcomes, _ = models["bert"].run([])
    assert outcomes == []


def test_a_groups_score_is_the_pipelines_mean_bit_for_bit() -> None:
    # Given groups of one to 40 float32 token scores, of every magnitude, some with a NaN score
    import warnings

    import numpy as np

    rng = np.random.default_rng(0)
    groups: list[list[Any]] = []
    for size in range(1, 41):
        for n in range(200):
            values = rng.random(size).astype(np.float32) ** rng.choice([1, 3, 8])
            if n % 40 == 0:
                values[rng.integers(size)] = np.nan
            groups.append(list(values))

    # When each group's score is taken as the engine takes it, and as the pipeline does
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a group of NaN scores alone: "Mean of empty slice"
        pairs = [(mean_score(g), np.mean(np.nanmean(g))) for g in groups]

    # Then they are the same value of the same type (a NaN a NaN), so that the stored JSON is the same
    for got, want in pairs:
        assert type(got) is type(want)
        assert got.tobytes() == want.tobytes() or (np.isnan(got) and np.isnan(want)), (got, want)
