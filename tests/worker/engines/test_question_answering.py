"""Question-answering parity with the transformers 5.2 ``pipeline("question-answering")``.

transformers 5.3+ has no question-answering pipeline, so the reference is stored: tests/fixtures/qa_reference/
reference.json, written by make_reference.py (next to it) with transformers 5.2.0 in a separate environment, for
the two committed tiny models in tests/fixtures/models (qa-bert: WordPiece, lower-cased; qa-roberta: byte-level
BPE). Every case is run here through the engine, loaded as a worker loads it (`ModelCache`), with a small
token budget so that the windows of one long context land in different micro-batches.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inferq.errors import InputError
from inferq.task_specs import TaskName, read_params, validate_params
from tests.reference import SCORE_TOLERANCE
from tests.support.engines import model_cache as cache_of
from tests.support.tiny_models import corpus
from worker.engines.base import Engine
from worker.engines.batching import plan_batches
from worker.engines.question_answering import _band_spans, _decode_spans_full, select_spans, select_spans_many
from worker.model_cache import ModelCache

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
MODELS = ("qa-bert", "qa-roberta")
REFERENCE: list[dict[str, Any]] = json.loads((FIXTURES / "qa_reference" / "reference.json").read_text("utf-8"))
#: Padded tokens per micro-batch: a single 384-token window fills a batch, so one item's windows are split up.
MAX_BATCH_TOKENS = 512


def _groups() -> dict[tuple[str, str], list[dict[str, Any]]]:
    """The reference cases by (model, params), in file order."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for case in REFERENCE:
        groups[(case["model"], json.dumps(case["params"], sort_keys=True))].append(case)
    return groups


GROUPS = _groups()


def _group_id(key: tuple[str, str]) -> str:
    model, params = key
    defaults = validate_params(TaskName.QUESTION_ANSWERING, {})
    changed = {k: v for k, v in json.loads(params).items() if defaults[k] != v}
    return model + ("-" + ",".join(f"{k}={v}" for k, v in changed.items()) if changed else "-defaults")


@pytest.fixture(scope="module")
def model_cache() -> ModelCache:
    sources = {name: FIXTURES / "models" / name for name in MODELS}
    return cache_of(sources, precision="fp32", max_batch_tokens=MAX_BATCH_TOKENS, max_batch_size=16)


def qa_engine(model_cache: ModelCache, model: str) -> Engine:
    return model_cache.engine(model, TaskName.QUESTION_ANSWERING)


def test_the_reference_covers_what_the_engine_must_match() -> None:
    # Given the stored reference
    params = [c["params"] for c in REFERENCE]

    # Then it has both models, and the cases the spec asks for
    assert {c["model"] for c in REFERENCE} == set(MODELS)
    assert 100 <= len(REFERENCE) <= 300
    assert any(p["top_k"] == 1 for p in params) and any(p["top_k"] == 3 for p in params)
    assert any(p["handle_impossible_answer"] for p in params)
    assert any(not p["align_to_words"] for p in params)
    assert {p["max_answer_len"] for p in params} >= {1, 5, 15, 30}
    assert {p["max_seq_len"] for p in params} >= {64, 128, 384}
    assert any(len(c["context"]) > 4000 for c in REFERENCE)
    assert any("🤗" in c["context"] for c in REFERENCE)
    assert any("서울" in c["context"] and "東京" in c["context"] for c in REFERENCE)
    assert any("run_squad.py" in c["context"] for c in REFERENCE)
    assert any(c["expected"] and c["expected"][0]["answer"] == "" for c in REFERENCE)  # a null answer wins
    assert len({c["expected"][0]["answer"] for c in REFERENCE if c["expected"]}) > 50  # answers differ


@pytest.mark.parametrize("key", list(GROUPS), ids=[_group_id(k) for k in GROUPS])
def test_answers_match_the_transformers_5_2_pipeline(key: tuple[str, str], model_cache: ModelCache) -> None:
    # Given the reference cases of one model and one set of parameters
    model, params_json = key
    cases = GROUPS[key]
    params = validate_params(TaskName.QUESTION_ANSWERING, json.loads(params_json))
    assert params == json.loads(params_json)  # the reference ran with complete parameters

    # When the engine answers all of them in one run
    inputs = [{"question": c["question"], "context": c["context"]} for c in cases]
    outcomes = qa_engine(model_cache, model).run(inputs, params)

    # Then every answer is the pipeline's: same texts and character offsets, in the same order, scores within
    # tolerance, each answer being the context's slice at its offsets
    mismatches = []
    for i, (case, outcome) in enumerate(zip(cases, outcomes, strict=True)):
        assert outcome is not None and outcome.ok, f"case {i}: {outcome}"
        got, want = outcome.result, case["expected"]
        if not _same_answers(got, want):
            mismatches.append(f"case {i} {case['question']!r}:\n  engine   {got}\n  pipeline {want}")
        for answer in got:
            assert answer["answer"] == case["context"][answer["start"] : answer["end"]], f"case {i}: {answer}"
        best = got[0]
        assert (outcome.answer, outcome.score, outcome.start_char, outcome.end_char) == (
            best["answer"],
            best["score"],
            best["start"],
            best["end"],
        )
    assert not mismatches, f"{len(mismatches)} of {len(cases)} differ:\n" + "\n".join(mismatches)


def _same_answers(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> bool:
    return len(got) == len(want) and all(
        (g["answer"], g["start"], g["end"]) == (w["answer"], w["start"], w["end"])
        and math.isclose(g["score"], w["score"], rel_tol=0, abs_tol=SCORE_TOLERANCE)
        for g, w in zip(got, want, strict=True)
    )


def test_a_context_longer_than_max_seq_len_is_split_into_overlapping_windows(model_cache: ModelCache) -> None:
    # Given a long context (hundreds of tokens) and a short one, with windows of 64 tokens and a stride of 16
    engine = qa_engine(model_cache, "qa-bert")
    long_context = " ".join(corpus()[100:130])
    inputs = [
        {"question": "What is raised?", "context": long_context},
        {"question": "Where do I live?", "context": "My name is Wolfgang and I live in Berlin"},
    ]
    params = validate_params(TaskName.QUESTION_ANSWERING, {"max_seq_len": 64, "doc_stride": 16, "top_k": 3})

    # When the inputs are preprocessed
    features = engine.preprocess(inputs, read_params(TaskName.QUESTION_ANSWERING, params))

    # Then the long context gives several features of the first item, the short one a single feature
    item_of = features.item_of.tolist()
    assert item_of.count(0) > 5
    assert item_of.count(1) == 1
    assert item_of == sorted(item_of)
    assert all(n <= 64 for n in features.lengths.tolist())
    # and consecutive windows overlap in the context
    windows = [enc for enc, item in zip(features.extra["encodings"], item_of, strict=True) if item == 0]
    for before, after in itertools.pairwise(windows):
        before_end = max(o[1] for o, s in zip(before.offsets, before.sequence_ids, strict=True) if s == 1)
        after_start = min(o[0] for o, s in zip(after.offsets, after.sequence_ids, strict=True) if s == 1)
        assert after_start < before_end
    # and the windows of that one item fall into different micro-batches under a small token budget
    plan = plan_batches(features.lengths, 128, 16)
    batches_of_item_0 = {b for b, rows in enumerate(plan) for r in rows.tolist() if item_of[r] == 0}
    assert len(batches_of_item_0) > 1

    # When the engine runs them that way
    outcomes = engine.run(inputs, params)

    # Then each input still has one outcome, whose answers lie in its own context
    assert len(outcomes) == 2
    for item, outcome in zip(inputs, outcomes, strict=True):
        assert outcome is not None and outcome.ok
        assert 1 <= len(outcome.result) <= 3
        for answer in outcome.result:
            assert answer["answer"] == item["context"][answer["start"] : answer["end"]]


def test_a_question_that_leaves_no_room_for_the_context_fails_alone(model_cache: ModelCache) -> None:
    # Given windows of 64 tokens with a stride of 32, and one question that takes most of a window
    engine = qa_engine(model_cache, "qa-roberta")
    context = " ".join(corpus()[:20])
    inputs = [
        {"question": "What is raised?", "context": context},
        {"question": " ".join(["which exception is raised"] * 10) + "?", "context": context},
        {"question": "Where do I live?", "context": "My name is Wolfgang and I live in Berlin"},
    ]
    params = validate_params(TaskName.QUESTION_ANSWERING, {"max_seq_len": 64, "doc_stride": 32})

    # When the engine runs them
    outcomes = engine.run(inputs, params)

    # Then that item fails with an input error, and the others are answered
    first, second, third = outcomes
    assert second is not None and isinstance(second.error, InputError)
    assert "doc_stride=32" in second.error.message
    assert first is not None and first.ok and first.answer
    assert third is not None and third.ok and third.answer


@pytest.mark.parametrize("top_k", [1, 3, 12])
@pytest.mark.parametrize("max_answer_len", [1, 4, 15, 400])
def test_banded_decoding_picks_the_spans_the_pipelines_full_matrix_picks(top_k: int, max_answer_len: int) -> None:
    # Given random logits of windows of many lengths, with a random span of context tokens and CLS allowed
    rng = np.random.default_rng(top_k * 1000 + max_answer_len)
    banded = 0
    for _ in range(60):
        length = int(rng.integers(8, 300))
        allowed = np.zeros(length, dtype=bool)
        lo = int(rng.integers(1, length - 2))
        allowed[lo : int(rng.integers(lo + 1, length))] = True
        allowed[0] = True
        start_logits = (rng.standard_normal(length) * 3).astype(np.float32)
        end_logits = (rng.standard_normal(length) * 3).astype(np.float32)

        # When the engine selects its spans (the banded way when there are enough positive scores)
        starts, ends, scores, _ = select_spans(
            start_logits, end_logits, allowed, top_k=top_k, max_answer_len=max_answer_len
        )

        # Then they are the spans of the pipeline's own computation over the full matrix
        start = np.where(allowed, start_logits, np.float32(-10000.0))[None]
        end = np.where(allowed, end_logits, np.float32(-10000.0))[None]
        start = np.exp(start - start.max(axis=-1, keepdims=True))
        start = start / start.sum()
        end = np.exp(end - end.max(axis=-1, keepdims=True))
        end = end / end.sum()
        start[0, 0] = end[0, 0] = 0.0
        banded += _band_spans(start[0], end[0], top_k, max_answer_len) is not None
        want_starts, want_ends, want_scores = _decode_spans_full(start, end, top_k, max_answer_len, allowed)
        assert starts.tolist() == want_starts.tolist()
        assert ends.tolist() == want_ends.tolist()
        assert scores.tolist() == want_scores.tolist()
    # (and the banded way was the one taken, but where a window has too few positive scores)
    assert banded >= 30


@pytest.mark.parametrize("top_k", [1, 3, 12])
@pytest.mark.parametrize("max_answer_len", [1, 15, 400])
def test_windows_of_one_length_decode_together_as_each_does_alone(top_k: int, max_answer_len: int) -> None:
    # Given windows of a few lengths, some with a wide span of context tokens, some with one or two (too few
    # positive span scores for the band: decoded the pipeline's full way)
    rng = np.random.default_rng(top_k * 7 + max_answer_len)
    for length in (9, 40, 130, 384):
        n = 24
        allowed = np.zeros((n, length), dtype=bool)
        allowed[:, 0] = True
        for row in allowed:
            lo = int(rng.integers(1, length - 1))
            row[lo : lo + int(rng.integers(1, 3)) if rng.random() < 0.3 else length] = True
        start_logits = (rng.standard_normal((n, length)) * 3).astype(np.float32)
        end_logits = (rng.standard_normal((n, length)) * 3).astype(np.float32)
        start_logits[3] = end_logits[3] = 0.0  # equal scores everywhere: ties broken alike

        # When they are decoded together, and each alone
        together = select_spans_many(start_logits, end_logits, allowed, top_k=top_k, max_answer_len=max_answer_len)
        alone = [
            select_spans(s, e, a, top_k=top_k, max_answer_len=max_answer_len)
            for s, e, a in zip(start_logits, end_logits, allowed, strict=True)
        ]

        # Then every window's spans, scores and null score are the same, bit for bit
        for (starts, ends, scores, null), (want_starts, want_ends, want_scores, want_null) in zip(
            together, alone, strict=True
        ):
            assert starts.tolist() == want_starts.tolist()
            assert ends.tolist() == want_ends.tolist()
            assert scores.tolist() == want_scores.tolist()
            assert scores.dtype == want_scores.dtype == np.float32
            assert null == want_null
