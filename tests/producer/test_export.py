"""Streaming export as JSONL and CSV."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inferq.tasks import TaskName
from producer.export import csv_header, write_csv, write_jsonl
from producer.results import ResultRow

SUCCEEDED = ResultRow(
    index=0,
    id="a",
    status="succeeded",
    result=[{"label": "POSITIVE", "score": 0.875}, {"label": "NEGATIVE", "score": 0.125}],
    error=None,
    label="POSITIVE",
    score=0.875,
)
FAILED = ResultRow(
    index=1,
    id=None,
    status="failed",
    result=None,
    error={"code": "inference_error", "message": 'RuntimeError: boom, "quoted"\nsecond line'},
)
QUEUED = ResultRow(index=2, id="ünï", status="queued", result=None, error=None)


def test_jsonl_writes_one_compact_object_per_row_and_counts_them() -> None:
    out = io.StringIO()
    n = write_jsonl([SUCCEEDED, FAILED, QUEUED], out)
    lines = out.getvalue().split("\n")
    assert n == 3
    assert lines[-1] == ""
    assert [json.loads(line) for line in lines[:-1]] == [r.to_json() for r in (SUCCEEDED, FAILED, QUEUED)]
    assert lines[0].startswith('{"index":0,"id":"a","status":"succeeded","result":[{"label":"POSITIVE"')
    assert '"ünï"' in lines[2]  # not escaped


def test_csv_classification_columns() -> None:
    # given a succeeded, a failed and a queued row
    out = io.StringIO()

    # when exported as CSV
    n = write_csv([SUCCEEDED, FAILED, QUEUED], out, TaskName.CLASSIFICATION)

    # then the top result is flattened, errors have their columns, and the full result is JSON in the last one
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert n == 3
    assert rows[0] == ["index", "id", "status", "label", "score", "error_code", "error_message", "result"]
    assert rows[1][:7] == ["0", "a", "succeeded", "POSITIVE", "0.875", "", ""]
    assert json.loads(rows[1][7]) == SUCCEEDED.result
    assert rows[2] == ["1", "", "failed", "", "", "inference_error", 'RuntimeError: boom, "quoted"\nsecond line', ""]
    assert rows[3] == ["2", "ünï", "queued", "", "", "", "", ""]


@pytest.mark.parametrize(
    ("task", "columns", "row", "cells"),
    [
        (
            TaskName.QUESTION_ANSWERING,
            ["answer", "score", "start", "end"],
            ResultRow(0, None, "succeeded", [], None, answer="Paris", score=0.5, start=3, end=8),
            ["Paris", "0.5", "3", "8"],
        ),
        (
            TaskName.FILL_MASK,
            ["token_str", "score"],
            ResultRow(0, None, "succeeded", [], None, label=" capital", score=0.25),
            [" capital", "0.25"],
        ),
        (
            TaskName.TOKEN_CLASSIFICATION,
            ["entity_count", "label", "score"],
            ResultRow(0, None, "succeeded", [], None, label="PER", score=0.75, entity_count=2),
            ["2", "PER", "0.75"],
        ),
    ],
)
def test_csv_task_columns(task: TaskName, columns: list[str], row: ResultRow, cells: list[str]) -> None:
    out = io.StringIO()
    write_csv([row], out, task)
    header, line = csv.reader(io.StringIO(out.getvalue()))
    assert header == ["index", "id", "status", *columns, "error_code", "error_message", "result"]
    assert header == csv_header(task)
    assert line == ["0", "", "succeeded", *cells, "", "", "[]"]


def test_csv_of_no_rows_is_a_header_only() -> None:
    out = io.StringIO()
    assert write_csv(iter(()), out, TaskName.CLASSIFICATION) == 0
    assert out.getvalue().count("\n") == 1


@pytest.mark.parametrize("writer", ["jsonl", "csv"])
def test_export_streams_without_materialising_the_rows(writer: str) -> None:
    # given a generator that records how far it has been consumed
    out = io.StringIO()
    pulled: list[int] = []

    def rows() -> Iterator[ResultRow]:
        for i in range(3):
            # when each row is pulled, every earlier row is already written
            assert out.getvalue().count("\n") == i + (writer == "csv")
            pulled.append(i)
            yield ResultRow(i, None, "queued", None, None)

    n = write_jsonl(rows(), out) if writer == "jsonl" else write_csv(rows(), out, TaskName.CLASSIFICATION)
    assert n == 3 and pulled == [0, 1, 2]


# -- properties ------------------------------------------------------------------------------------------------------

json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
json_value = st.recursive(
    json_leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3), max_leaves=8
)
result_rows = st.builds(
    ResultRow,
    index=st.integers(0, 2**31),
    id=st.none() | st.text(min_size=1),
    status=st.sampled_from(["succeeded", "failed", "queued", "cancelled"]),
    result=st.none() | st.lists(json_value, max_size=4),
    error=st.none() | st.fixed_dictionaries({"code": st.text(), "message": st.text()}),
    label=st.none() | st.text(),
    score=st.none() | st.floats(allow_nan=False, allow_infinity=False),
    answer=st.none() | st.text(),
    start=st.none() | st.integers(0, 10**6),
    end=st.none() | st.integers(0, 10**6),
    entity_count=st.none() | st.integers(0, 1000),
)


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(result_rows, max_size=8))
def test_jsonl_round_trip(rows: list[ResultRow]) -> None:
    out = io.StringIO()
    assert write_jsonl(rows, out) == len(rows)
    # Lines split at "\n" only: JSON escapes newlines, and a raw U+2028 is not a line break in JSONL.
    parsed = [json.loads(line) for line in out.getvalue().split("\n")[:-1]]
    assert parsed == [r.to_json() for r in rows]


def _none_if_empty(cell: str) -> str | None:
    return cell or None


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(result_rows, max_size=8), task=st.sampled_from(list(TaskName)))
def test_csv_round_trip(rows: list[ResultRow], task: TaskName) -> None:
    # given arbitrary rows written as CSV
    out = io.StringIO(newline="")
    assert write_csv(rows, out, task) == len(rows)

    # when read back with csv.reader
    header, *lines = csv.reader(io.StringIO(out.getvalue(), newline=""))

    # then index, id, status and result come back (an empty cell standing for None)
    assert len(lines) == len(rows)
    for row, line in zip(rows, lines, strict=True):
        cells: dict[str, Any] = dict(zip(header, line, strict=True))
        assert int(cells["index"]) == row.index
        assert _none_if_empty(cells["id"]) == row.id
        assert cells["status"] == row.status
        assert (json.loads(cells["result"]) if cells["result"] else None) == row.result
        assert _none_if_empty(cells["error_code"]) == (row.error["code"] or None if row.error else None)
