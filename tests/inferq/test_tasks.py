from __future__ import annotations

import pytest

from inferq.errors import InvalidParameter, UnknownTask
from inferq.tasks import TaskName, parse_task, validate_params


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
