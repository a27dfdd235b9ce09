from __future__ import annotations

import pytest

from inferq.errors import InvalidParameter, UnknownTask
from inferq.task_specs import TaskName, parse_task, validate_params


def test_defaults_are_filled_in() -> None:
    assert validate_params(TaskName.CLASSIFICATION, {}) == {"top_k": 1, "function_to_apply": "default"}
    qa = validate_params(TaskName.QUESTION_ANSWERING, {})
    assert qa["doc_stride"] == 128 and qa["max_seq_len"] == 384 and qa["max_answer_len"] == 15


@pytest.mark.parametrize(
    ("task", "params", "field"),
    [
        (TaskName.CLASSIFICATION, {"top_k": 0}, "top_k"),
        (TaskName.CLASSIFICATION, {"topk": 2}, "topk"),
        (TaskName.CLASSIFICATION, {"function_to_apply": "relu"}, "function_to_apply"),
        (TaskName.QUESTION_ANSWERING, {"doc_stride": 400}, "params"),
        (TaskName.FILL_MASK, {"top_k": "many"}, "top_k"),
    ],
)
def test_bad_parameters_are_named(task: TaskName, params: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidParameter) as err:
        validate_params(task, params)
    assert field in str(err.value)


def test_task_names_accept_dashes_and_reject_unknown() -> None:
    assert parse_task("question-answering") is TaskName.QUESTION_ANSWERING
    with pytest.raises(UnknownTask):
        parse_task("translation")


def test_every_task_has_one_spec_whose_columns_exist() -> None:
    from inferq.schema import Item
    from inferq.task_specs import TASKS

    # Given the per-task table
    assert set(TASKS) == set(TaskName)
    for task, spec in TASKS.items():
        # Then each spec names its own task, typed parameters whose defaults validate, and real item columns
        assert spec.name is task
        assert spec.params.model_validate({}) == spec.params()
        for column in spec.top_columns:
            assert column in Item.__table__.c, (task, column)
        assert len({c for c, _ in spec.csv_columns}) == len(spec.csv_columns)


@pytest.mark.parametrize(
    ("task", "params", "field", "message"),
    [
        (TaskName.EMBEDDING, {"overflow": "windows", "window_tokens": 32, "stride": 40}, "params", "stride (40)"),
        (TaskName.EMBEDDING, {"window_tokens": 32}, "params", "overflow=windows only"),
        (TaskName.EMBEDDING, {"prompt": "q: ", "prompt_name": "query"}, "params", "not both"),
        (TaskName.EMBEDDING, {"dtype": "float64"}, "dtype", "float32"),
        (TaskName.EMBEDDING, {"pooling": "weighted"}, "pooling", "lasttoken"),
        (TaskName.RERANK, {"top_k": 0}, "top_k", "greater than or equal to 1"),
        (TaskName.ZERO_SHOT_CLASSIFICATION, {"hypothesis_template": "no slot"}, "hypothesis_template", "no {}"),
        (TaskName.ZERO_SHOT_CLASSIFICATION, {"hypothesis_template": "{{}} escaped"}, "hypothesis_template", "no {}"),
        (TaskName.ZERO_SHOT_CLASSIFICATION, {"hypothesis_template": "{x} is {}"}, "hypothesis_template", "one {}"),
        (TaskName.ZERO_SHOT_CLASSIFICATION, {"candidate_labels": []}, "candidate_labels", "must not be empty"),
        (TaskName.ZERO_SHOT_CLASSIFICATION, {"candidate_labels": ["a", " "]}, "candidate_labels", "non-empty"),
    ],
)
def test_bad_parameters_of_the_encoder_tasks_are_named(
    task: TaskName, params: dict[str, object], field: str, message: str
) -> None:
    with pytest.raises(InvalidParameter) as err:
        validate_params(task, params)
    assert err.value.details["field"] == field
    assert message in str(err.value)


def test_zero_shot_labels_given_as_one_string_are_split_at_commas() -> None:
    params = validate_params(TaskName.ZERO_SHOT_CLASSIFICATION, {"candidate_labels": "sport, politics,, art "})
    assert params["candidate_labels"] == ["sport", "politics", "art"]
