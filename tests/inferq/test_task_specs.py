from __future__ import annotations

import json
from pathlib import Path

import pytest

from inferq import constants
from inferq.errors import InvalidParameter, MalformedValue, UnknownTask
from inferq.model_sources import check_model
from inferq.settings import ModelSpec
from inferq.task_specs import MAX_WINDOW_TOKENS, TaskName, parse_task, read_params, validate_params


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
    from inferq.schema import Result
    from inferq.task_specs import TASKS

    # Given the per-task table
    assert set(TASKS) == set(TaskName)
    for task, spec in TASKS.items():
        # Then each spec names its own task, typed parameters whose defaults validate, and real item columns
        assert spec.name is task
        assert spec.params.model_validate({}) == spec.params()
        for column in spec.top_columns:
            assert column in Result.__table__.c, (task, column)
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


# -- checks at submit (issue 27, finding 5) ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "params"),
    [
        (TaskName.CLASSIFICATION, {"top_k": True}),
        (TaskName.QUESTION_ANSWERING, {"top_k": True}),
        (TaskName.QUESTION_ANSWERING, {"max_seq_len": False}),
        (TaskName.FILL_MASK, {"top_k": True}),
        (TaskName.RERANK, {"top_k": True}),
        (TaskName.EMBEDDING, {"dimensions": True}),
    ],
)
def test_a_boolean_is_not_taken_for_a_count(task: TaskName, params: dict[str, object]) -> None:
    # Given a count parameter sent as JSON's true or false; when validated, then it is refused, naming the parameter
    with pytest.raises(InvalidParameter) as err:
        validate_params(task, params)
    (name,) = params
    assert err.value.details["field"] == name and "must be an integer, not a boolean" in err.value.message
    # And the count itself, and a boolean parameter given as a boolean, still pass
    assert validate_params(task, {name: 2 if name != "max_seq_len" else 256})[name] in (2, 256)
    assert validate_params(TaskName.EMBEDDING, {"normalize": True})["normalize"] is True


def test_window_tokens_are_bounded_at_submit_whatever_the_model() -> None:
    windows = {"overflow": "windows"}
    with pytest.raises(InvalidParameter) as err:
        validate_params(TaskName.EMBEDDING, {**windows, "window_tokens": 1e9})
    assert err.value.details["field"] == "window_tokens" and str(MAX_WINDOW_TOKENS) in err.value.message
    assert validate_params(TaskName.EMBEDDING, {**windows, "window_tokens": 256})["window_tokens"] == 256


def test_window_tokens_beyond_the_models_maximum_are_refused_naming_it(tmp_path: Path) -> None:
    # Given an embedding model directory whose files say it takes 128 tokens (its sentence-transformers config)
    # within a position table of 512
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "max_position_embeddings": 512}))
    (tmp_path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128}))
    spec = ModelSpec(source=str(tmp_path))

    def check(window: int) -> None:
        params = validate_params(TaskName.EMBEDDING, {"overflow": "windows", "window_tokens": window, "stride": 8})
        check_model(spec, TaskName.EMBEDDING, read_params(TaskName.EMBEDDING, params))

    # When more tokens a window are asked for than it takes, then the submit refuses, with the model's maximum
    with pytest.raises(InvalidParameter) as err:
        check(100_000)
    assert err.value.details["field"] == "window_tokens" and "the model's maximum of 128 tokens" in err.value.message
    # And a window that fits passes
    check(100)


def test_zero_shot_candidate_labels_in_params_are_capped_as_a_lines_are() -> None:
    labels = [f"label {i}" for i in range(constants.MAX_LIST_TEXTS)]
    task = TaskName.ZERO_SHOT_CLASSIFICATION
    assert len(validate_params(task, {"candidate_labels": labels})["candidate_labels"]) == constants.MAX_LIST_TEXTS
    with pytest.raises(InvalidParameter) as err:
        validate_params(task, {"candidate_labels": [*labels, "one more"]})
    assert err.value.details["field"] == "candidate_labels" and str(constants.MAX_LIST_TEXTS) in err.value.message
    # The same cap on the other list parameters
    with pytest.raises(InvalidParameter):
        validate_params(TaskName.FILL_MASK, {"targets": ["x"] * (constants.MAX_LIST_TEXTS + 1)})


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"prompt": "query:\x00"}, "prompt"),
        ({"prompt": "query: \ud800"}, "prompt"),
        ({"prompt_name": "\udfff"}, "prompt_name"),
    ],
)
def test_a_parameter_that_cannot_be_stored_is_a_malformed_value(params: dict[str, object], field: str) -> None:
    # A NUL (PostgreSQL's text refuses it) or a lone surrogate (no UTF-8 form) is refused before anything is stored
    with pytest.raises(MalformedValue) as err:
        validate_params(TaskName.EMBEDDING, params)
    assert err.value.code == "malformed_value" and err.value.details["field"] == field
    with pytest.raises(MalformedValue) as err:
        validate_params(TaskName.ZERO_SHOT_CLASSIFICATION, {"candidate_labels": ["fine", "b\ud800d"]})
    assert err.value.details["field"] == "candidate_labels[1]"
    # And an emoji (a surrogate pair in JSON's escapes, one character once decoded) is fine
    assert validate_params(TaskName.EMBEDDING, {"prompt": "\U0001f600 "})["prompt"] == "\U0001f600 "
