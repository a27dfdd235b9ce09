"""Helpers of the in-process runs."""

from __future__ import annotations

import numpy as np

from bench.inprocess import (
    WARMUP_ITEMS,
    params_for,
    ranked,
    ranked_by_score,
    result_of_outcome,
    warm_up_for,
    warm_up_items,
)
from inferq.errors import InferenceError
from inferq.task_specs import TaskName
from worker.engines.base import Outcome


def test_the_warm_up_takes_the_longest_items_by_their_text_fields() -> None:
    items = [{"text": "x" * n, "id": 7} for n in range(100)]
    warm = warm_up_items(items)
    assert len(warm) == WARMUP_ITEMS
    assert sorted(len(w["text"]) for w in warm) == list(range(100 - WARMUP_ITEMS, 100))
    pairs = [{"question": "q" * n, "context": "c" * (100 - 2 * n)} for n in range(40)]
    assert warm_up_items(pairs)[0] == pairs[0]  # 100 characters in all, the most
    assert warm_up_items(["a", "ccc", "bb"]) == ["ccc", "bb", "a"]


def test_lists_of_texts_count_whole_and_many_sequence_items_warm_up_fewer() -> None:
    lines = [{"query": "q", "documents": ["d" * n] * 3} for n in range(10)]
    assert warm_up_items(lines, 2) == [lines[9], lines[8]]
    assert len(warm_up_for(TaskName.RERANK, lines)) == 2
    assert len(warm_up_for(TaskName.ZERO_SHOT_CLASSIFICATION, [{"text": "t"}] * 50)) == 8
    assert len(warm_up_for(TaskName.EMBEDDING, [{"text": "t"}] * 50)) == WARMUP_ITEMS


def test_every_task_has_its_parameters() -> None:
    assert params_for(TaskName.ZERO_SHOT_CLASSIFICATION)["candidate_labels"][0] == "politics"
    assert len(params_for(TaskName.ZERO_SHOT_CLASSIFICATION)["candidate_labels"]) == 10
    assert params_for(TaskName.EMBEDDING)["dtype"] == "float32"
    assert params_for(TaskName.RERANK)["top_k"] is None


def test_zero_shot_and_rerank_results_rank_by_label_and_document_index() -> None:
    labels = [{"label": "sports", "score": 0.7}, {"label": "travel", "score": 0.3}]
    assert ranked(TaskName.ZERO_SHOT_CLASSIFICATION, labels) == [("sports", 0.7), ("travel", 0.3)]
    docs = [{"index": 2, "score": 0.9}, {"index": 0, "score": 0.1}]
    assert ranked(TaskName.RERANK, docs) == [(2, 0.9), (0, 0.1)]


def test_scores_rank_best_first_and_ties_keep_their_order() -> None:
    assert ranked_by_score(np.array([0.1, 0.5, 0.3, 0.5])) == [(1, 0.5), (3, 0.5), (2, 0.3), (0, 0.1)]


def test_an_embedding_outcome_is_its_vector() -> None:
    v = np.array([0.25, -0.5, 1.0], dtype="<f4")
    got = result_of_outcome(TaskName.EMBEDDING, Outcome(result={"dim": 3, "dtype": "float32"}, vector=v.tobytes()))
    assert isinstance(got, np.ndarray) and got.tolist() == [[0.25, -0.5, 1.0]]
    assert result_of_outcome(TaskName.EMBEDDING, Outcome.failure(InferenceError("x"))) is None
    assert result_of_outcome(TaskName.RERANK, None) is None
