"""The benchmark's inputs: reproducible, of the right shape, drawn from the sentences given."""

from __future__ import annotations

import pytest

from bench.inputs import classification_inputs, draw, fill_mask_inputs, qa_inputs, scale_rows
from inferq.task_specs import MASK_PLACEHOLDER

SENTENCES = tuple(f"Sentence number {i} says something about the {w} here." for i, w in enumerate("abcdefghij" * 3))


def test_draw_is_reproducible_and_samples_without_repeats_while_it_can() -> None:
    # Given a seed, when drawing fewer items than there are sentences
    first = draw(SENTENCES, 20, seed=3)
    # Then the same seed draws the same items, each sentence at most once
    assert first == draw(SENTENCES, 20, seed=3)
    assert len(set(first)) == 20
    # And another seed draws another order
    assert first != draw(SENTENCES, 20, seed=4)


def test_draw_cycles_through_the_corpus_again_when_asked_for_more() -> None:
    items = draw(SENTENCES, 75, seed=0)
    assert len(items) == 75
    assert set(items) == set(SENTENCES)
    assert all(items.count(s) in (2, 3) for s in SENTENCES)


def test_draw_refuses_an_empty_corpus() -> None:
    with pytest.raises(ValueError):
        draw((), 1, seed=0)


def test_classification_inputs_are_single_texts() -> None:
    items = classification_inputs(SENTENCES, 5, seed=1)
    assert [list(i) for i in items] == [["text"]] * 5
    assert all(i["text"] in SENTENCES for i in items)


def test_qa_questions_are_drawn_from_their_context() -> None:
    items = qa_inputs(SENTENCES, 50, seed=2)
    assert len(items) == 50
    for item in items:
        assert set(item) == {"question", "context"}
        assert item["question"].startswith("What is ") and item["question"].endswith("?")
        # The question's words come from one sentence of the context.
        words = item["question"][len("What is ") : -1]
        assert words in item["context"]
        n_sentences = sum(1 for s in SENTENCES if s in item["context"])
        assert 2 <= n_sentences <= 6
    assert items == qa_inputs(SENTENCES, 50, seed=2)


def test_fill_mask_inputs_have_exactly_one_placeholder_never_first() -> None:
    items = fill_mask_inputs(SENTENCES, 40, seed=5)
    assert len(items) == 40
    for item in items:
        words = item["text"].split()
        assert words.count(MASK_PLACEHOLDER) == 1
        assert words[0] != MASK_PLACEHOLDER


def test_fill_mask_inputs_say_so_when_too_few_sentences_can_be_masked() -> None:
    with pytest.raises(ValueError, match="maskable"):
        fill_mask_inputs(("1 2 3.", "4 5 6."), 3, seed=0)


def test_scale_rows_cycle_with_ids() -> None:
    rows = scale_rows(SENTENCES, 65)
    assert [r["id"] for r in rows[:2]] == ["r0", "r1"]
    assert rows[30]["text"] == SENTENCES[0] and rows[64]["text"] == SENTENCES[4]


def test_embedding_and_zero_shot_inputs_are_single_texts() -> None:
    from bench.inputs import embedding_inputs, zero_shot_inputs

    assert embedding_inputs(SENTENCES, 7, seed=1) == classification_inputs(SENTENCES, 7, seed=1)
    assert [list(i) for i in zero_shot_inputs(SENTENCES, 3, seed=2)] == [["text"]] * 3


def test_rerank_queries_come_from_one_of_their_documents() -> None:
    from bench.inputs import rerank_inputs

    items = rerank_inputs(SENTENCES, 12, seed=3, documents=10)
    assert len(items) == 12
    for item in items:
        assert set(item) == {"query", "documents"}
        assert len(item["documents"]) == 10 and len(set(item["documents"])) == 10
        assert all(d in SENTENCES for d in item["documents"])
        # The query is the first 3 to 8 words of one of the documents.
        assert 3 <= len(item["query"].split()) <= 8
        assert any(d.startswith(item["query"]) for d in item["documents"])
    assert items == rerank_inputs(SENTENCES, 12, seed=3, documents=10)


def test_rerank_inputs_need_as_many_sentences_as_documents() -> None:
    from bench.inputs import rerank_inputs

    with pytest.raises(ValueError, match="documents"):
        rerank_inputs(SENTENCES, 1, seed=0, documents=len(SENTENCES) + 1)
