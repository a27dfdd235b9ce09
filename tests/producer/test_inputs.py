"""Reading and validating submitted inputs: every bad line is reported with its line and field."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inferq.errors import InvalidInput, LineError
from inferq.task_specs import MASK_PLACEHOLDER, TaskName
from producer.inputs import (
    InputRecord,
    Limits,
    ReadResult,
    _decode,
    iter_inputs,
    read_inputs,
    scan_inputs,
    validate_rows,
)

LIMITS = Limits(max_text_chars=100, max_items=1000)
CLS = TaskName.CLASSIFICATION
QA = TaskName.QUESTION_ANSWERING
FILL = TaskName.FILL_MASK
NER = TaskName.TOKEN_CLASSIFICATION


def read(
    content: str | bytes,
    task: TaskName = CLS,
    *,
    format: Any = "auto",
    limits: Limits = LIMITS,
    mask_tokens: tuple[str, ...] = (),
) -> ReadResult:
    raw = content.encode() if isinstance(content, str) else content
    result = read_inputs(io.BytesIO(raw), task, limits, format=format, mask_tokens=mask_tokens)
    # Every case also checks the two reads of a streamed submit: the scan finds the same errors and count, the
    # second read the same records.
    stream = io.BytesIO(raw)
    scan = scan_inputs(stream, task, limits, format=format, mask_tokens=mask_tokens)
    stream.seek(0)
    records = list(iter_inputs(stream, task, limits, format=scan.format, mask_tokens=mask_tokens))
    assert (scan.valid, scan.errors, scan.total_bad, scan.truncated) == (
        len(result.records),
        result.errors,
        result.total_bad,
        result.truncated,
    )
    assert records == result.records
    return result


def jsonl(*objs: Any) -> str:
    return "".join(json.dumps(o) + "\n" for o in objs)


def only_error(result: ReadResult) -> LineError:
    assert result.total_bad == 1, result.errors
    assert len(result.errors) == 1
    return result.errors[0]


# -- JSONL -----------------------------------------------------------------------------------------------------------


def test_valid_jsonl_gives_records_with_line_numbers_ids_and_task_fields_only() -> None:
    # given a file with a blank line in the middle, ids of both kinds and one optional field
    content = (
        jsonl({"text": "good", "id": "a"}, {"text": "bad", "text_pair": "worse", "id": 7})
        + "\n"
        + jsonl({"text": "third"})
    )

    # when it is read
    result = read(content)

    # then blank lines are skipped but counted, ids are strings, and optional fields are absent unless given
    assert result.errors == [] and result.total_bad == 0 and result.ok
    assert result.records == [
        InputRecord(line=1, client_id="a", data={"text": "good"}),
        InputRecord(line=2, client_id="7", data={"text": "bad", "text_pair": "worse"}),
        InputRecord(line=4, client_id=None, data={"text": "third"}),
    ]


def test_crlf_line_endings_and_a_byte_order_mark_are_accepted() -> None:
    result = read(b"\xef\xbb\xbf" + b'{"text": "a"}\r\n\r\n{"text": "b"}\r\n')
    assert [(r.line, r.data) for r in result.records] == [(1, {"text": "a"}), (3, {"text": "b"})]
    assert result.ok


def test_last_line_without_newline_is_read() -> None:
    result = read('{"text": "a"}\n{"text": "b"}')
    assert [r.line for r in result.records] == [1, 2]


def test_empty_file_gives_nothing() -> None:
    result = read(b"")
    assert result.records == [] and result.errors == [] and result.total_bad == 0


@pytest.mark.parametrize(
    ("line", "field", "message"),
    [
        ('{"text": "a"', None, "malformed JSON"),
        ("[1, 2]", None, "expected a JSON object, got array"),
        ('"just a string"', None, "expected a JSON object, got string"),
        ("null", None, "expected a JSON object, got null"),
        ("{}", "text", "missing required field 'text'"),
        ('{"txt": "a"}', "txt", "unknown field 'txt' (allowed fields: id, text, text_pair)"),
        ('{"text": 3}', "text", "must be a string, got integer"),
        ('{"text": null}', "text", "must be a string, got null"),
        ('{"text": ["a"]}', "text", "must be a string, got array"),
        ('{"text": "a", "text_pair": 1.5}', "text_pair", "must be a string, got number"),
        ('{"text": ""}', "text", "must not be empty"),
        ('{"text": " \\n\\t "}', "text", "must not be empty or whitespace only"),
        ('{"text": "a", "text_pair": ""}', "text_pair", "must not be empty"),
        ('{"text": "' + "x" * 101 + '"}', "text", "is 101 characters long; the limit is 100"),
        ('{"text": "a", "id": true}', "id", "must be a string or an integer, got boolean"),
        ('{"text": "a", "id": 1.0}', "id", "must be a string or an integer, got number"),
        ('{"text": "a", "id": {"x": 1}}', "id", "must be a string or an integer, got object"),
        ('{"text": "a", "id": "' + "i" * 256 + '"}', "id", "the limit is 255"),
        ('{"text": "a", "id": "a\\u0000b"}', "id", "NUL"),
        ('{"text": "a", "id": ' + "9" * 5000 + "}", None, "malformed JSON"),
        ('{"text": "a", "' + "k" * 500 + '": 1}', "k" * 500, "unknown field 'kkkkk"),
        ("[" * 20_000 + "]" * 20_000, None, "malformed JSON"),
    ],
)
def test_each_bad_jsonl_line_is_reported_with_its_line_and_field(line: str, field: str | None, message: str) -> None:
    # given a bad line between two good ones
    content = '{"text": "ok"}\n' + line + '\n{"text": "ok too"}\n'

    # when the file is read
    result = read(content)

    # then the bad line is reported at line 2, naming the field, and the good lines are still returned
    error = only_error(result)
    assert (error.line, error.field) == (2, field)
    assert message in error.message
    assert [r.line for r in result.records] == [1, 3]


def test_text_at_exactly_the_limit_is_accepted() -> None:
    result = read(jsonl({"text": "x" * 100}))
    assert result.ok and len(result.records) == 1


def test_null_optional_fields_and_null_id_are_absent() -> None:
    result = read(jsonl({"text": "a", "text_pair": None, "id": None}))
    assert result.records == [InputRecord(line=1, client_id=None, data={"text": "a"})]


def test_duplicate_client_ids_are_allowed() -> None:
    result = read(jsonl({"id": "x", "text": "a"}, {"id": "x", "text": "b"}))
    assert result.ok
    assert [r.client_id for r in result.records] == ["x", "x"]


def test_question_answering_needs_question_and_context() -> None:
    # given a QA file whose second line has no context
    content = jsonl({"question": "who?", "context": "me"}, {"question": "who?"}, {"context": "me"})

    # when it is read
    result = read(content, QA)

    # then each missing field is named
    assert [(e.line, e.field) for e in result.errors] == [(2, "context"), (3, "question")]
    assert "missing required field 'context'" in result.errors[0].message
    assert result.records == [InputRecord(1, None, {"question": "who?", "context": "me"})]


def test_question_answering_refuses_a_text_field() -> None:
    error = only_error(read(jsonl({"question": "q", "context": "c", "text": "t"}), QA))
    assert (error.line, error.field) == (1, "text")
    assert "allowed fields: id, question, context" in error.message


def test_fill_mask_needs_a_mask_token_or_the_placeholder() -> None:
    # given texts with the placeholder, with the model's mask token, and with neither
    content = jsonl({"text": f"Paris is the {MASK_PLACEHOLDER} of France."}, {"text": "a <mask> b"}, {"text": "none"})

    # when read for a model whose mask token is <mask>
    result = read(content, FILL, mask_tokens=("<mask>",))

    # then only the text with neither is refused, and the message says what to do
    error = only_error(result)
    assert (error.line, error.field) == (3, "text")
    assert error.message.startswith("no mask token: put [[MASK]] or the model's mask token")
    assert "'<mask>'" in error.message
    assert [r.line for r in result.records] == [1, 2]


def test_fill_mask_without_known_mask_tokens_accepts_the_placeholder_only() -> None:
    result = read(jsonl({"text": "a [MASK] b"}, {"text": f"a {MASK_PLACEHOLDER} b"}), FILL)
    assert [e.line for e in result.errors] == [1]
    assert [r.line for r in result.records] == [2]


def test_mask_tokens_are_not_checked_for_other_tasks() -> None:
    assert read(jsonl({"text": "no mask"}), NER, mask_tokens=("<mask>",)).ok


def test_invalid_utf8_is_reported_with_its_line_and_reading_goes_on() -> None:
    # given a file whose second line holds a byte that is not UTF-8
    content = b'{"text": "a"}\n{"text": "caf\xe9"}\n{"text": "b"}\n'

    # when it is read
    result = read(content)

    # then line 2 is reported without a field, and lines 1 and 3 are returned
    error = only_error(result)
    assert (error.line, error.field) == (2, None)
    assert "invalid UTF-8" in error.message
    assert [r.line for r in result.records] == [1, 3]


def test_a_line_longer_than_any_valid_line_is_refused_without_being_decoded() -> None:
    # given a line far longer than the text limit allows
    limits = Limits(max_text_chars=10, max_items=100)
    content = '{"text": "a"}\n' + '{"text": "' + "x" * 200_000 + '"}\n{"text": "b"}\n'

    # when it is read
    result = read(content, limits=limits)

    # then it is reported at its line, and reading goes on after it
    error = only_error(result)
    assert error.line == 2 and "line longer than" in error.message
    assert [r.line for r in result.records] == [1, 3]


def test_skip_semantics_return_both_errors_and_valid_records() -> None:
    # given a file mixing good and bad lines
    content = jsonl({"text": "a"}, {"text": ""}, {"text": "b"}, [1], {"text": "c"})

    # when it is read
    result = read(content)

    # then the caller gets both: it may raise, or submit the valid records only
    assert [r.data["text"] for r in result.records] == ["a", "b", "c"]
    assert [e.line for e in result.errors] == [2, 4]
    assert result.total_bad == 2 and not result.ok
    raised = InvalidInput(result.errors, result.total_bad)
    assert "line 2, field 'text'" in str(raised)


def test_errors_are_capped_but_all_bad_lines_are_counted() -> None:
    limits = Limits(max_text_chars=100, max_items=1000, max_errors=3)
    result = read("[]\n" * 10, format="jsonl", limits=limits)
    assert [e.line for e in result.errors] == [1, 2, 3]
    assert result.total_bad == 10


def test_more_than_max_items_stops_reading_at_the_first_line_beyond_the_limit() -> None:
    # given a limit of 3 items and a file of 5, with a blank line in the way
    limits = Limits(max_text_chars=100, max_items=3)
    content = jsonl({"text": "1"}, {"text": "2"}) + "\n" + jsonl({"text": "3"}, {"text": "4"}, {"text": "5"})

    # when it is read
    result = read(content, limits=limits)

    # then the first 3 are kept and the error names line 5 (the 4th item) and the limit
    assert [r.data["text"] for r in result.records] == ["1", "2", "3"]
    error = only_error(result)
    assert (error.line, error.field) == (5, None)
    assert "the limit is 3" in error.message
    assert result.truncated


def test_bad_lines_count_towards_max_items() -> None:
    limits = Limits(max_text_chars=100, max_items=2)
    result = read(jsonl({"text": ""}, {"text": "a"}, {"text": "b"}), limits=limits)
    assert [e.line for e in result.errors] == [1, 3]
    assert result.truncated


def test_the_max_items_error_is_kept_even_when_the_error_list_is_full() -> None:
    limits = Limits(max_text_chars=100, max_items=4, max_errors=2)
    result = read("[]\n" * 6, format="jsonl", limits=limits)
    assert result.total_bad == 5
    assert [e.line for e in result.errors] == [1, 5]
    assert "the limit is 4" in result.errors[-1].message


def test_exactly_max_items_is_fine() -> None:
    result = read(jsonl({"text": "1"}, {"text": "2"}), limits=Limits(max_text_chars=10, max_items=2))
    assert result.ok and not result.truncated and len(result.records) == 2


# -- CSV -------------------------------------------------------------------------------------------------------------


def test_valid_csv_gives_records_with_physical_line_numbers() -> None:
    # given a CSV whose second row spans two physical lines, and a blank line
    content = 'id,text,text_pair\r\n1,"hello, world",\r\n2,"two\nlines",pair\r\n\r\n,"say ""hi""",x\r\n'

    # when it is read
    result = read(content, format="csv")

    # then rows keep the line they start on, empty optional cells are absent and empty ids are None
    assert result.ok, result.errors
    assert result.records == [
        InputRecord(line=2, client_id="1", data={"text": "hello, world"}),
        InputRecord(line=3, client_id="2", data={"text": "two\nlines", "text_pair": "pair"}),
        InputRecord(line=6, client_id=None, data={"text": 'say "hi"', "text_pair": "x"}),
    ]


def test_csv_columns_may_come_in_any_order_and_id_is_optional() -> None:
    result = read("context,question\nthe context,the question\n", QA, format="csv")
    assert result.records == [InputRecord(2, None, {"question": "the question", "context": "the context"})]


def test_csv_rows_of_empty_cells_are_skipped_like_blank_lines() -> None:
    result = read("text,text_pair\n,\na,\n", format="csv")
    assert result.ok and [r.line for r in result.records] == [3]


@pytest.mark.parametrize(
    ("content", "line", "field", "message"),
    [
        ("id,text,txt\n1,a,b\n", 1, "txt", "unknown column 'txt' (allowed columns: id, text, text_pair)"),
        ("id,text_pair\n1,a\n", 1, "text", "missing required column 'text'"),
        ("text,text\na,b\n", 1, "text", "appears twice"),
        ("id,txt\n1,hello\n", 1, "txt", "unknown column 'txt'"),
        ("hello world,how are you\n", 1, None, "no header row: the first row must name the columns (id, text"),
        ("txt\nhello\n", 1, None, "found 'txt'"),
    ],
)
def test_bad_csv_headers_are_reported_and_stop_reading(
    content: str, line: int, field: str | None, message: str
) -> None:
    result = read(content, format="csv")
    error = only_error(result)
    assert (error.line, error.field) == (line, field)
    assert message in error.message
    assert result.records == []


@pytest.mark.parametrize(
    ("row", "field", "message"),
    [
        ("1,", "text", "must not be empty"),
        ('1,"   "', "text", "must not be empty or whitespace only"),
        ("1,a,extra", None, "row has 3 cells; the header has 2 columns"),
        ("1", None, "row has 1 cells"),
        ("1," + "x" * 101, "text", "the limit is 100"),
        ('1,"a"b', None, "malformed CSV"),
    ],
)
def test_each_bad_csv_row_is_reported_with_its_line_and_field(row: str, field: str | None, message: str) -> None:
    # given a bad row between two good ones
    content = f"id,text\n0,ok\n{row}\n2,ok too\n"

    # when it is read
    result = read(content, NER, format="csv")

    # then the bad row is reported at line 3 and the good ones are returned
    error = only_error(result)
    assert (error.line, error.field) == (3, field)
    assert message in error.message
    assert [r.line for r in result.records] == [2, 4]


def test_csv_invalid_utf8_in_a_multiline_row_is_reported_on_its_line() -> None:
    # given a row that starts on line 3 with a bad byte on its second physical line
    content = b'text\ngood\n"first\nsec\xffond"\nafter\n'

    # when it is read
    result = read(content, format="csv")

    # then the bad physical line is named, and reading goes on
    error = only_error(result)
    assert (error.line, error.field) == (4, None)
    assert "invalid UTF-8" in error.message
    assert [(r.line, r.data["text"]) for r in result.records] == [(2, "good"), (5, "after")]


def test_csv_invalid_utf8_in_the_header_stops_reading() -> None:
    result = read(b"te\xffxt\nhello\n", format="csv")
    error = only_error(result)
    assert error.line == 1 and "invalid UTF-8" in error.message
    assert result.records == []


def test_csv_fill_mask_rows_need_a_mask() -> None:
    result = read("text\na [[MASK]] b\nno mask\n", FILL, format="csv")
    error = only_error(result)
    assert (error.line, error.field) == (3, "text")


def test_csv_max_items_names_the_first_row_beyond_the_limit() -> None:
    limits = Limits(max_text_chars=100, max_items=2)
    result = read('text\na\n"b\nb"\nc\nd\n', format="csv", limits=limits)
    assert [r.line for r in result.records] == [2, 3]
    error = only_error(result)
    assert (error.line, error.field) == (5, None)
    assert result.truncated


def test_csv_header_only_gives_nothing() -> None:
    result = read("id,text\n", format="csv")
    assert result.records == [] and result.ok


# -- sources and format detection ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("in.jsonl", '{"text": "a"}\n'),
        ("in.NDJSON", '{"text": "a"}\n'),
        ("in.json", '{"text": "a"}\n'),
        ("in.csv", "text\na\n"),
        ("in.txt", '\n  {"text": "a"}\n'),
        ("in", "text\na\n"),
    ],
)
def test_paths_are_read_by_extension_or_by_their_first_character(tmp_path: Path, name: str, content: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    for source in (path, str(path)):
        result = read_inputs(source, CLS, LIMITS)
        assert result.ok, result.errors
        assert [r.data for r in result.records] == [{"text": "a"}]


def test_extension_wins_over_content(tmp_path: Path) -> None:
    # given a .csv file whose header happens to start with "{"
    path = tmp_path / "in.csv"
    path.write_text('{"text": "a"}\n', encoding="utf-8")

    # then it is read as CSV (and its header refused)
    error = only_error(read_inputs(path, CLS, LIMITS))
    assert error.line == 1 and "no header row" in error.message


def test_explicit_format_overrides_detection(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text('{"text": "a"}\n', encoding="utf-8")
    assert read_inputs(path, CLS, LIMITS, format="jsonl").ok


def test_streams_are_sniffed_after_blank_lines_and_a_bom() -> None:
    result = read(b'\xef\xbb\xbf\n\n{"text": "a"}\n')
    assert [(r.line, r.data) for r in result.records] == [(3, {"text": "a"})]
    result = read(b"\xef\xbb\xbf\n\ntext\na\n")
    assert result.ok and [r.line for r in result.records] == [4]


def test_dash_reads_standard_input(monkeypatch: pytest.MonkeyPatch) -> None:
    class Stdin:
        buffer = io.BytesIO(b"text\nfrom stdin\n")

    monkeypatch.setattr(sys, "stdin", Stdin)
    result = read_inputs("-", CLS, LIMITS)
    assert [r.data for r in result.records] == [{"text": "from stdin"}]


def test_text_streams_are_read_too() -> None:
    result = read_inputs(io.StringIO('\n{"text": "é"}\n'), CLS, LIMITS)  # type: ignore[arg-type]
    assert [(r.line, r.data) for r in result.records] == [(2, {"text": "é"})]


def test_an_unknown_format_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown input format"):
        read_inputs(io.BytesIO(b""), CLS, LIMITS, format="tsv")  # type: ignore[arg-type]


def test_a_stream_passed_in_is_not_closed() -> None:
    stream = io.BytesIO(b'{"text": "a"}\n')
    read_inputs(stream, CLS, LIMITS)
    assert not stream.closed


# -- Python objects --------------------------------------------------------------------------------------------------


def test_validate_rows_accepts_dicts_and_plain_strings_for_single_text_tasks() -> None:
    rows = [(1, "plain"), (2, {"text": "a", "id": 5}), (3, 42), (4, {"text": ""})]
    result = validate_rows(rows, CLS, LIMITS)
    assert result.records == [InputRecord(1, None, {"text": "plain"}), InputRecord(2, "5", {"text": "a"})]
    assert [(e.line, e.field) for e in result.errors] == [(3, None), (4, "text")]
    assert "expected an object with fields text, text_pair (or a string), got integer" in result.errors[0].message


def test_plain_strings_go_through_the_line_checks_of_single_text_tasks() -> None:
    from inferq.task_specs import TaskName, ZeroShotParams

    # Fill-mask: a plain string is a text, and must hold a mask
    result = validate_rows([(1, "a [[MASK]] here"), (2, "no mask")], TaskName.FILL_MASK, LIMITS)
    assert [r.data for r in result.records] == [{"text": "a [[MASK]] here"}]
    assert [(e.line, e.field) for e in result.errors] == [(2, "text")]
    # Zero-shot: plain strings take the job's labels; without any, each names the missing field
    zsc = TaskName.ZERO_SHOT_CLASSIFICATION
    assert validate_rows([(1, "a text")], zsc, LIMITS, params=ZeroShotParams(candidate_labels=["a"])).ok
    assert only_error(validate_rows([(1, "a text")], zsc, LIMITS)).field == "candidate_labels"
    # Rerank needs two fields: never a plain string
    assert "query, documents" in only_error(validate_rows([(1, "q")], TaskName.RERANK, LIMITS)).message


def test_validate_rows_refuses_plain_strings_for_question_answering() -> None:
    error = only_error(validate_rows([(1, "what?")], QA, LIMITS))
    assert error.line == 1 and "question, context" in error.message


def test_validate_rows_applies_max_items() -> None:
    result = validate_rows(((i, "x") for i in range(1, 10)), NER, Limits(max_text_chars=5, max_items=4))
    assert len(result.records) == 4 and result.truncated
    assert only_error(result).line == 5


# -- properties ------------------------------------------------------------------------------------------------------

# Storable texts: no NUL (PostgreSQL's text refuses it); st.text never draws a lone surrogate.
texts = st.text(min_size=1, max_size=40).filter(lambda s: not s.isspace() and "\x00" not in s)
ids = st.none() | st.integers(-(10**12), 10**12) | st.text(min_size=1, max_size=20).filter(lambda s: "\x00" not in s)
records = st.lists(st.tuples(ids, texts, st.none() | texts), max_size=20)


@settings(max_examples=60, deadline=None)
@given(records=records, blank_every=st.integers(0, 3))
def test_any_valid_records_written_as_jsonl_read_back_the_same(
    records: list[tuple[str | int | None, str, str | None]], blank_every: int
) -> None:
    # given records of arbitrary unicode (emoji, newlines, quotes) written as JSONL, with blank lines here and there
    lines: list[str] = []
    expected: list[InputRecord] = []
    for i, (cid, text, pair) in enumerate(records):
        if blank_every and i % blank_every == 0:
            lines.append("")
        obj: dict[str, Any] = {"text": text}
        if pair is not None:
            obj["text_pair"] = pair
        if cid is not None:
            obj["id"] = cid
        lines.append(json.dumps(obj, ensure_ascii=i % 2 == 0))
        data = {"text": text} | ({"text_pair": pair} if pair is not None else {})
        expected.append(InputRecord(len(lines), None if cid is None else str(cid), data))

    # when read back
    result = read("\n".join(lines) + "\n", format="auto")

    # then every record comes back as it was, on its line
    assert result.errors == []
    assert result.records == expected


not_objects = st.one_of(
    st.just("{"),
    st.just("nope"),
    st.just("[1, 2"),
    st.integers().map(str),
    st.lists(st.integers(), max_size=3).map(json.dumps),
    st.text(max_size=10).map(json.dumps),
    st.just("true"),
    st.just("null"),
)


@settings(max_examples=60, deadline=None)
@given(
    layout=st.lists(st.one_of(st.just("good"), st.just("blank"), not_objects), min_size=1, max_size=25),
)
def test_any_line_that_is_not_a_json_object_is_reported_on_its_line(layout: list[str]) -> None:
    # given good lines, blank lines and lines that are not JSON objects, in any order
    lines = ['{"text": "fine"}' if kind == "good" else "" if kind == "blank" else kind for kind in layout]
    bad = [i + 1 for i, kind in enumerate(layout) if kind not in ("good", "blank")]
    good = [i + 1 for i, kind in enumerate(layout) if kind == "good"]

    # when read as JSONL
    result = read("\n".join(lines) + "\n", format="jsonl")

    # then each bad line is reported on its own line number, without a field
    assert [e.line for e in result.errors] == bad
    assert all(e.field is None for e in result.errors)
    assert [r.line for r in result.records] == good


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=300)
@given(
    text=st.one_of(
        st.text(max_size=12),
        st.tuples(
            st.sampled_from(["", " ", "\t", "\u2028", "x"]), json_values, st.sampled_from(["", "\n", " \n", "x"])
        ).map(lambda t: t[0] + json.dumps(t[1]) + t[2]),
    )
)
def test_a_line_decodes_exactly_as_json_loads_decodes_it(text: str) -> None:
    def outcome(decode: Any) -> tuple[Any, ...]:
        try:
            return ("value", json.dumps(decode(text)))
        except (ValueError, RecursionError) as exc:
            return ("error", type(exc), str(exc))

    assert outcome(_decode) == outcome(json.loads)
