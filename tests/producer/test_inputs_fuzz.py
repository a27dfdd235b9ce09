"""The input reader under arbitrary input (hypothesis): whatever the bytes of a JSONL or CSV file, or the decoded
objects handed to `validate_rows`, reading never raises; every problem is a `LineError` naming its line (and its
field, where one is at fault) whose text an answer can carry, and every record it accepts can be stored (no NUL, no
lone surrogate). Valid generated records, written as JSONL or CSV, read back the same.

tests/producer/test_inputs.py holds the reader's examples and its JSONL round trip."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inferq.errors import LineError
from inferq.task_specs import TaskName, unstorable
from producer.inputs import InputRecord, Limits, ReadResult, read_inputs, validate_rows

LIMITS = Limits(max_text_chars=60, max_items=40, max_errors=100)
TASKS = [TaskName.CLASSIFICATION, TaskName.RERANK, TaskName.ZERO_SHOT_CLASSIFICATION, TaskName.QUESTION_ANSWERING]

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: Pieces a hostile file is made of: JSON and CSV punctuation, escapes (of NUL, of lone and paired surrogates),
#: field names, invalid UTF-8, a BOM, line breaks of every kind.
PIECES = st.sampled_from(
    [
        b"{",
        b"}",
        b"[",
        b"]",
        b'"',
        b",",
        b":",
        b"\n",
        b"\r\n",
        b"\r",
        b'"text"',
        b'"text_pair"',
        b'"id"',
        b'"query"',
        b'"documents"',
        b'"candidate_labels"',
        b'"question"',
        b'"context"',
        b"text,id\n",
        b"\\u0000",
        b"\\ud800",
        b"\\udfff",
        b"\\ud83d\\ude00",
        b"\x00",
        b"\xff",
        b"\xed\xa0\x80",
        b"\xef\xbb\xbf",
        b"null",
        b"true",
        b"1e999",
        b"-0",
        b"9" * 30,
        "caf\u00e9 \u2028".encode(),
        b" ",
        b"\t",
    ]
)
hostile_files = st.one_of(
    st.binary(max_size=300),
    st.lists(st.one_of(PIECES, st.binary(max_size=4)), max_size=60).map(b"".join),
)


def assert_well_formed(result: ReadResult) -> None:
    """What every read must give, whatever its input: errors on real lines with showable text, storable records."""
    assert result.total_bad >= len(result.errors)
    for error in result.errors:
        assert isinstance(error, LineError) and error.line >= 0
        assert error.field is None or isinstance(error.field, str)
        # An API answer is UTF-8 JSON: the message and the field must encode
        error.message.encode("utf-8")
        (error.field or "").encode("utf-8")
    for record in result.records:
        assert record.line >= 1
        assert record.client_id is None or unstorable(record.client_id) is None
        for value in record.data.values():
            for text in value if isinstance(value, list) else [value]:
                assert isinstance(text, str) and unstorable(text) is None, text


@FUZZ
@given(content=hostile_files, task=st.sampled_from(TASKS), fmt=st.sampled_from(["auto", "jsonl", "csv"]))
def test_any_bytes_read_as_a_file_give_line_errors_never_an_exception(content: bytes, task: TaskName, fmt: Any) -> None:
    # When any bytes are read as JSONL, CSV or either
    result = read_inputs(io.BytesIO(content), task, LIMITS, format=fmt)
    # Then the read ends, with line errors and storable records only
    assert_well_formed(result)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | st.just("\ud800") | st.just("\x00"),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
field_names = st.sampled_from(["text", "text_pair", "id", "query", "documents", "candidate_labels", "question"])
objects = st.dictionaries(field_names | st.text(max_size=5), json_values, max_size=4)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(json_values, max_size=6), rows=st.lists(objects, max_size=8), task=st.sampled_from(TASKS))
def test_any_decoded_objects_give_line_errors_never_an_exception(
    values: list[Any], rows: list[dict[str, Any]], task: TaskName
) -> None:
    # When any JSON values (lone surrogates and NULs among their strings) are validated as Python inputs
    result = validate_rows(enumerate([*values, *rows], start=1), task, LIMITS)
    # Then each is a record or an error on its own line
    assert_well_formed(result)
    assert len(result.records) + result.total_bad == len(values) + len(rows)

    # And objects written as JSONL (ensure_ascii: escapes, so that lone surrogates survive) read as they validate
    result = validate_rows(enumerate(rows, start=1), task, LIMITS)
    lines = "".join(json.dumps(row) + "\n" for row in rows).encode("ascii")
    from_file = read_inputs(io.BytesIO(lines), task, LIMITS, format="jsonl")
    assert_well_formed(from_file)
    assert [(r.line, r.client_id, r.data) for r in from_file.records] == [
        (r.line, r.client_id, r.data) for r in result.records
    ]
    assert [(e.line, e.field) for e in from_file.errors] == [(e.line, e.field) for e in result.errors]


# Storable texts: no NUL; st.text draws no lone surrogate.
texts = st.text(min_size=1, max_size=30).filter(lambda s: not s.isspace() and "\x00" not in s)
ids = st.none() | st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=12)


@FUZZ
@given(rows=st.lists(st.tuples(ids, texts, st.none() | texts), max_size=15))
def test_any_valid_records_written_as_csv_read_back_the_same(rows: list[tuple[str | None, str, str | None]]) -> None:
    # Given valid records of arbitrary Unicode (quotes, commas, line breaks inside cells) written by csv.writer
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(["id", "text", "text_pair"])
    expected: list[tuple[str | None, dict[str, str]]] = []
    for cid, text, pair in rows:
        writer.writerow([cid or "", text, pair or ""])
        expected.append((cid, {"text": text} | ({"text_pair": pair} if pair else {})))

    # When read back as CSV
    result = read_inputs(io.BytesIO(out.getvalue().encode("utf-8")), TaskName.CLASSIFICATION, LIMITS, format="csv")

    # Then every record comes back as it was, in order, and nothing is reported
    assert result.errors == []
    assert [(r.client_id, r.data) for r in result.records] == expected
    assert all(isinstance(r, InputRecord) for r in result.records)
