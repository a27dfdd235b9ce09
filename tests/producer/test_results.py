"""Result rows and the typed per-task result objects."""

from __future__ import annotations

import dataclasses

import pytest

from inferq.task_specs import TaskName
from producer.results import Answer, ClassLabel, Entity, MaskFill, ResultRow, parse_result


def test_to_json_holds_exactly_the_exported_fields() -> None:
    # given a succeeded row with typed columns filled in
    row = ResultRow(
        index=3,
        id="a",
        status="succeeded",
        result=[{"label": "POSITIVE", "score": 0.9}],
        error=None,
        label="POSITIVE",
        score=0.9,
    )

    # then its JSON form has the five exported keys only
    assert row.to_json() == {
        "index": 3,
        "id": "a",
        "status": "succeeded",
        "result": [{"label": "POSITIVE", "score": 0.9}],
        "error": None,
    }


def test_result_objects_are_frozen_and_slotted() -> None:
    for obj in (
        ResultRow(0, None, "queued", None, None),
        ClassLabel("x", 0.5),
        Answer("a", 0.5, 0, 1),
        MaskFill(1, "a", 0.5, "s"),
        Entity("PER", 0.5, "w", 0, 1),
    ):
        assert not hasattr(obj, "__dict__")
        with pytest.raises(dataclasses.FrozenInstanceError):
            obj.score = 1.0  # type: ignore[misc]


def test_parse_classification() -> None:
    parsed = parse_result(TaskName.CLASSIFICATION, [{"label": "POS", "score": 0.75}, {"label": "NEG", "score": 0.25}])
    assert parsed == [ClassLabel("POS", 0.75), ClassLabel("NEG", 0.25)]


def test_parse_question_answering() -> None:
    parsed = parse_result(TaskName.QUESTION_ANSWERING, [{"answer": "Paris", "score": 0.8, "start": 10, "end": 15}])
    assert parsed == [Answer(answer="Paris", score=0.8, start=10, end=15)]


def test_parse_fill_mask_gives_one_list_per_mask() -> None:
    # given a result for a text with two masks
    fill = {"token": 7, "token_str": "a", "score": 0.5, "sequence": "a b"}
    result = [[fill], [fill | {"token": 8, "token_str": "b"}, fill]]

    # when parsed
    parsed = parse_result(TaskName.FILL_MASK, result)

    # then each mask has its fillers
    assert parsed == [
        [MaskFill(7, "a", 0.5, "a b")],
        [MaskFill(8, "b", 0.5, "a b"), MaskFill(7, "a", 0.5, "a b")],
    ]


def test_parse_fill_mask_accepts_a_single_mask_stored_flat() -> None:
    fill = {"token": 7, "token_str": "a", "score": 0.5, "sequence": "a b"}
    assert parse_result(TaskName.FILL_MASK, [fill]) == [[MaskFill(7, "a", 0.5, "a b")]]
    assert parse_result(TaskName.FILL_MASK, []) == []


def test_parse_token_classification_single_and_grouped_entities() -> None:
    result = [
        {"entity": "B-PER", "score": 0.9, "word": "Ada", "start": 0, "end": 3, "index": 1},
        {"entity_group": "LOC", "score": 0.8, "word": "London", "start": 10, "end": 16},
        {"entity": "B-ORG", "score": 0.7, "word": "X", "start": None, "end": None, "index": 4},
    ]
    assert parse_result(TaskName.TOKEN_CLASSIFICATION, result) == [
        Entity("B-PER", 0.9, "Ada", 0, 3, index=1, grouped=False),
        Entity("LOC", 0.8, "London", 10, 16, index=None, grouped=True),
        Entity("B-ORG", 0.7, "X", None, None, index=4, grouped=False),
    ]


def test_malformed_results_raise_value_error_naming_the_task() -> None:
    with pytest.raises(ValueError, match="malformed classification result"):
        parse_result(TaskName.CLASSIFICATION, [{"score": 0.5}])
    with pytest.raises(ValueError, match="malformed question_answering result"):
        parse_result(TaskName.QUESTION_ANSWERING, ["not a dict"])
