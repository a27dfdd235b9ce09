"""Streaming export as JSONL and CSV."""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import insert, text

from inferq import migrate
from inferq.db import is_sqlite
from inferq.errors import JobNotFound
from inferq.schema import Result
from inferq.settings import Settings
from inferq.states import ItemState
from inferq.task_specs import TaskName
from producer.client import Client, store_job
from producer.export import csv_header, export_jsonl, write_csv, write_jsonl
from producer.inputs import InputRecord
from producer.results import ResultFilter, ResultRow

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


# -- stored results: export_jsonl splices the stored JSON text --------------------------------------------------------

#: Results as the worker stores them (through the JSON column type), each one a way a spliced text could go wrong.
STORED_RESULTS: list[list[Any]] = [
    [{"label": "POSITIVE", "score": 0.9998123049736023}, {"label": "NEGATIVE", "score": 0.00018769502639770508}],
    [{"label": "ünï €", "score": 0.1}, {"label": "emoji 🤗👩‍💻 and CJK 東京 한국어", "score": 5e-324}],
    [
        {
            "answer": 'quotes " \\ \n newline \u2028 \u2029 \u0000 nul',
            "score": 1.7976931348623157e308,
            "start": 0,
            "end": 9,
        }
    ],
    # fill-mask: one list per mask
    [
        [{"token": 7, "token_str": " capital", "score": 0.30000000000000004, "sequence": "Paris is the capital."}],
        [
            {"token": 8, "token_str": "ß", "score": -0.0, "sequence": "x"},
            {"token": 9, "token_str": "", "score": 1e-07, "sequence": ""},
        ],
    ],
    [
        {
            "entity_group": "PER",
            "score": 1.0,
            "word": "Jean",
            "start": None,
            "end": None,
            "z": {"b": [1, 2.5, True, None], "a": {}},
        }
    ],
    [],
]
#: Results stored by other writers, as PostgreSQL's json type keeps their text: spaced as its json_build_object
#: spaces, numbers and characters spelled other ways; whitespace and line breaks between the tokens.
RAW_RESULTS = [
    '[{"label" : "POSITIVE", "score" : 0.50050000000000000000}, {"label" : "N\\u00c9G", "score" : 5E-1, "n" : 1.50}]',
    '[\n  {"label": "POSITIVE",\r\n   "score": 0.5e0 }\n]',
]


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def client(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    """A client on a migrated database of each kind, shared by this module's tests (each stores its own job)."""
    if request.param == "sqlite":
        settings = Settings(database_url=f"sqlite:///{tmp_path_factory.mktemp('export') / 'inferq.db'}")
        migrate.upgrade(settings)
    else:
        settings = Settings(database_url=request.getfixturevalue("migrated_postgres"))
    with Client(settings) as c:
        yield c


def store(client: Client, items: list[dict[str, Any]]) -> str:
    """A job of ``len(items)`` items; each item dict's values are written as the worker writes them (a result row,
    one bulk INSERT through the JSON column type); an item dict without ``state`` stays queued, its result SQL
    NULL."""
    job_id = uuid.uuid4().hex
    records = [
        InputRecord(line=i + 1, client_id=item.pop("id", None), data={"text": "t"}) for i, item in enumerate(items)
    ]
    with client.sessions.begin() as session:
        store_job(session, job_id, TaskName.CLASSIFICATION, "m", {"top_k": 2}, records, 4, "q")
        written = [{"job_id": job_id, "index": i, **item} for i, item in enumerate(items) if "state" in item]
        if written:
            session.execute(insert(Result), written)
    return job_id


def exported(client: Client, job_id: str, **filters: Any) -> tuple[int, str]:
    out = io.StringIO()
    with client.reader() as session:
        n = export_jsonl(session, job_id, out, ResultFilter(**filters))
    return n, out.getvalue()


def assert_same_as_decoded(client: Client, job_id: str, **filters: Any) -> int:
    """`export_jsonl` against the decoded path (`write_jsonl` of `Client.results`): one line per row, and each line,
    decoded and encoded again, is the decoded path's line byte for byte (same keys, order, types and values)."""
    decoded = io.StringIO()
    expected = write_jsonl(client.results(job_id, **filters), decoded)
    n, spliced = exported(client, job_id, **filters)
    assert n == expected
    assert spliced.count("\n") == n  # no line breaks but the ends of lines
    lines = spliced.split("\n")[:-1]
    assert [json.dumps(json.loads(line), ensure_ascii=False, separators=(",", ":")) for line in lines] == (
        decoded.getvalue().split("\n")[:-1]
    )
    return n


def test_jsonl_export_of_stored_results_parses_to_the_decoded_rows(client: Client) -> None:
    # given succeeded items with tricky results, failed items (a JSON null result, an error message), queued
    # items (no result: SQL NULL), and ids with characters to escape
    items: list[dict[str, Any]] = [
        {"id": f"r{i}", "state": "succeeded", "result": r, "label": "POSITIVE", "score": 0.25 * (i % 4)}
        for i, r in enumerate(STORED_RESULTS)
    ]
    items += [
        {
            "id": 'ünï "q"',
            "state": "failed",
            "result": None,
            "error_code": "inference_error",
            "error_message": 'RuntimeError: boom, "quoted" ünï 🤗\nsecond line\ttab \\ \u2028',
        },
        {"state": "failed", "result": None, "error_code": "attempts_exhausted", "error_message": None},
        {"id": "queued"},
        {"id": "also queued"},
        *({"id": "raw", "state": "succeeded", "label": "POSITIVE", "score": 0.5} for _ in RAW_RESULTS),
    ]
    job_id = store(client, items)
    on_sqlite = is_sqlite(client.settings.database_url)
    with client.sessions.begin() as session:
        for i, raw in enumerate(RAW_RESULTS, start=len(items) - len(RAW_RESULTS)):
            session.execute(
                text(
                    f"UPDATE results SET result = {':raw' if on_sqlite else 'CAST(:raw AS json)'} "
                    'WHERE job_id = :job AND "index" = :i'
                ),
                {"raw": raw, "job": job_id, "i": i},
            )

    # when exported as JSONL, then every line parses to the decoded row
    assert assert_same_as_decoded(client, job_id) == len(items)


@pytest.mark.parametrize(
    "filters",
    [{"label": "NEGATIVE"}, {"min_score": 0.5}, {"failed": True}, {"state": ItemState.QUEUED}],
    ids=["label", "min-score", "failed", "state"],
)
def test_jsonl_export_filters_as_client_results_does(client: Client, filters: dict[str, Any]) -> None:
    # given a job with items of every state and labels
    items: list[dict[str, Any]] = [
        {"state": "succeeded", "result": [{"label": lbl, "score": s}], "label": lbl, "score": s}
        for lbl, s in [("POSITIVE", 0.9), ("NEGATIVE", 0.75), ("NEGATIVE", 0.25)]
    ]
    items += [{"state": "failed", "result": None, "error_code": "inference_error", "error_message": "x"}, {}]
    job_id = store(client, items)

    # when exported with a filter, then the same rows come out as from Client.results
    assert assert_same_as_decoded(client, job_id, **filters) >= 1


def test_jsonl_export_of_an_unknown_job_raises(client: Client) -> None:
    with pytest.raises(JobNotFound):
        exported(client, "no-such-job")


@settings(max_examples=40, deadline=None)
@given(results=st.lists(st.none() | st.lists(json_value, max_size=4), min_size=1, max_size=6))
def test_jsonl_export_round_trips_arbitrary_stored_results(client: Client, results: list[list[Any] | None]) -> None:
    job_id = store(client, [{"state": "succeeded", "result": r} for r in results])
    assert assert_same_as_decoded(client, job_id) == len(results)
