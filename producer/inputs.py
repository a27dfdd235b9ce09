"""Reading and validating submitted inputs: JSONL and CSV files, or Python objects.

Every bad line is collected as a `LineError` (its line, its field, what is wrong), never raised: the caller decides
whether to refuse the whole submission (`InvalidInput`) or to submit the valid lines only. Files are read one line at a
time, as bytes, so that invalid UTF-8 is reported with its line number and no line is held longer than it must be.

Two ways to read a file: `read_inputs` returns every valid record in a list (memory grows with the file); a seekable
file can instead be read twice in constant memory, `scan_inputs` first (validate every line, keep only the count and
the errors), then, once the scan says to go on, `iter_inputs` from the same position (the valid records, one at a
time, straight to wherever they are stored). Both passes run the same readers, so they see the same lines.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any, Literal

from inferq import constants
from inferq.errors import LineError
from inferq.task_specs import TASKS, LineContext, TaskName, TaskParams, unstorable

Format = Literal["auto", "jsonl", "csv"]

#: Longest client id, in characters: the width of ``items.client_id``.
MAX_ID_CHARS = 255

#: Bytes one character may take in a line: a JSON escape of a character outside the BMP (``\\ud83d\\ude00``) takes
#: 12. Lines longer than this many bytes per allowed character are refused before they are decoded, which bounds the
#: memory one line can take whatever the file holds.
_BYTES_PER_CHAR = 12

#: Room on a line for punctuation, field names and spacing.
_LINE_SLACK_BYTES = 64 * 1024

_EXTENSIONS: dict[str, Literal["jsonl", "csv"]] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
}

_BOM = "\ufeff"


@dataclass(frozen=True)
class InputRecord:
    """One valid input line."""

    #: 1-based line in the file (for CSV, the physical line where the row starts; the header is line 1).
    line: int
    #: The optional ``id`` field, as a string.
    client_id: str | None
    #: The task's fields only (``{"text": …, "text_pair": …}``, lists for list fields); optional fields absent
    #: when not given.
    data: dict[str, Any]


@dataclass
class ReadResult:
    records: list[InputRecord]
    #: The first `Limits.max_errors` problems, in line order.
    errors: list[LineError]
    #: How many lines were bad in all.
    total_bad: int
    #: True when reading stopped at `Limits.max_items` (the last error says so): the input is incomplete.
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.total_bad == 0


@dataclass(frozen=True)
class Limits:
    max_text_chars: int
    max_items: int
    max_errors: int = 50


def read_inputs(
    source: str | os.PathLike[str] | IO[bytes],
    task: TaskName,
    limits: Limits,
    *,
    format: Format = "auto",
    mask_tokens: Sequence[str] = (),
    params: TaskParams | None = None,
) -> ReadResult:
    """Read and validate a JSONL or CSV file (a path, ``"-"`` for standard input, or a binary stream), keeping every
    valid record in memory.

    ``format="auto"`` goes by the file's extension (``.jsonl``, ``.ndjson``, ``.json``, ``.csv``); for standard
    input, streams and other names it looks at the first non-blank character: ``{`` means JSONL, anything else CSV.
    A stream passed in is read but not closed."""
    validator = _Validator(task, limits, mask_tokens, params)
    collector = _Collector(limits)
    with open_input(source, format) as (stream, format):
        lines = _Lines(stream, validator.line_cap)
        records = list(_records(lines, _format(format, lines), validator, collector))
    return ReadResult(records, collector.errors, collector.total_bad, collector.truncated)


@dataclass(frozen=True)
class Scan:
    """What a first pass over a file found (`scan_inputs`): the count of valid lines and the errors, no records."""

    #: Valid lines: the records `iter_inputs` yields from the same start.
    valid: int
    #: The first `Limits.max_errors` problems, in line order.
    errors: list[LineError]
    #: How many lines were bad in all.
    total_bad: int
    #: True when reading stopped at `Limits.max_items`.
    truncated: bool
    #: The format read (``auto`` resolved): pass it to `iter_inputs`.
    format: Literal["jsonl", "csv"]

    @property
    def ok(self) -> bool:
        return self.total_bad == 0


def scan_inputs(
    stream: IO[Any],
    task: TaskName,
    limits: Limits,
    *,
    format: Format = "auto",
    mask_tokens: Sequence[str] = (),
    params: TaskParams | None = None,
) -> Scan:
    """Pass one over a stream (from where it stands): validate every line, keeping only the errors and the count, so
    that memory stays flat whatever the file's size. ``format="auto"`` sniffs the first non-blank character."""
    validator = _Validator(task, limits, mask_tokens, params)
    collector = _Collector(limits)
    lines = _Lines(stream, validator.line_cap)
    resolved = _format(format, lines)
    valid = 0
    for _ in _records(lines, resolved, validator, collector):
        valid += 1
    return Scan(valid, collector.errors, collector.total_bad, collector.truncated, resolved)


def iter_inputs(
    stream: IO[Any],
    task: TaskName,
    limits: Limits,
    *,
    format: Format = "auto",
    mask_tokens: Sequence[str] = (),
    params: TaskParams | None = None,
) -> Iterator[InputRecord]:
    """Pass two over a stream (seek it back to where `scan_inputs` started): the valid records, one at a time, with
    the same line numbers; bad lines are passed over (the scan has them)."""
    validator = _Validator(task, limits, mask_tokens, params)
    collector = _Collector(limits)
    lines = _Lines(stream, validator.line_cap)
    yield from _records(lines, _format(format, lines), validator, collector)


@contextmanager
def open_input(source: str | os.PathLike[str] | IO[Any], format: Format = "auto") -> Iterator[tuple[IO[Any], Format]]:
    """The stream to read a source from (a path is opened, and closed after; ``"-"`` is standard input; a stream is
    used as it is, not closed) and its format, resolved by the file's extension where ``auto`` and a path has one."""
    if not isinstance(source, str | os.PathLike):
        yield source, format
        return
    path = os.fspath(source)
    if path == "-":
        yield sys.stdin.buffer, format
        return
    if format == "auto":
        format = _EXTENSIONS.get(os.path.splitext(path)[1].lower(), "auto")
    with open(path, "rb") as stream:
        yield stream, format


def validate_rows(
    rows: Iterable[tuple[int, Any]],
    task: TaskName,
    limits: Limits,
    *,
    mask_tokens: Sequence[str] = (),
    params: TaskParams | None = None,
) -> ReadResult:
    """Validate decoded inputs, given as ``(line, object)`` pairs: dicts of the task's fields (plus ``id``), or,
    for the tasks that take a single ``text``, plain strings."""
    validator = _Validator(task, limits, mask_tokens, params)
    collector = _Collector(limits)
    records: list[InputRecord] = []
    for line, obj in rows:
        if not collector.next_item(line):
            break
        if isinstance(obj, str) and validator.single_text:
            obj = {"text": obj}
        if isinstance(obj, dict):
            records.extend(collector.take(validator.check(line, obj)))
        else:
            collector.add(LineError(line, None, f"expected {validator.shape}, got {_type_name(obj)}"))
    return ReadResult(records, collector.errors, collector.total_bad, collector.truncated)


def _format(format: Format, lines: _Lines) -> Literal["jsonl", "csv"]:
    if format not in ("auto", "jsonl", "csv"):
        raise ValueError(f"unknown input format {format!r} (known: auto, jsonl, csv)")
    return _sniff(lines) if format == "auto" else format


def _records(
    lines: _Lines, format: Literal["jsonl", "csv"], validator: _Validator, collector: _Collector
) -> Iterator[InputRecord]:
    """The valid records of a file, in order; the errors go to ``collector``."""
    if format == "jsonl":
        return _read_jsonl(lines, validator, collector)
    return _read_csv(lines, validator, collector)


# -- formats ---------------------------------------------------------------------------------------------------------


def _read_jsonl(lines: _Lines, validator: _Validator, collector: _Collector) -> Iterator[InputRecord]:
    for text in lines:
        lineno = lines.count
        if lines.bad is not None:
            if not collector.next_item(lineno):
                return
            collector.add(lines.take_bad())
            continue
        if not text or text.isspace():
            continue
        if not collector.next_item(lineno):
            return
        try:
            obj = _decode(text)
        except json.JSONDecodeError as exc:
            collector.add(LineError(lineno, None, f"malformed JSON: {exc.msg} (column {exc.colno})"))
            continue
        except (ValueError, RecursionError) as exc:  # an integer too long to convert, nesting too deep
            collector.add(LineError(lineno, None, f"malformed JSON: {exc}"))
            continue
        if isinstance(obj, dict):
            yield from collector.take(validator.check(lineno, obj))
        else:
            collector.add(LineError(lineno, None, f"expected a JSON object, got {_type_name(obj)}"))


def _read_csv(lines: _Lines, validator: _Validator, collector: _Collector) -> Iterator[InputRecord]:
    # A field longer than csv's limit raises csv.Error (reported as a bad row); keep the limit above the text limit
    # so that over-long texts get the clearer message from the validator.
    if csv.field_size_limit() <= validator.limits.max_text_chars:
        csv.field_size_limit(validator.limits.max_text_chars + 1)
    reader = csv.reader(lines, strict=True)
    header: list[str] | None = None
    required = {f.name for f in validator.fields if f.required}
    while True:
        start = lines.count + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            bad = lines.take_bad() if lines.bad is not None else LineError(start, None, f"malformed CSV: {exc}")
            if header is None:
                collector.add(bad)
                return
            if not collector.next_item(start):
                return
            collector.add(bad)
            continue
        if lines.bad is not None:
            if header is None:
                collector.add(lines.take_bad())
                return
            if not collector.next_item(start):
                return
            collector.add(lines.take_bad())
            continue
        if not any(row):  # a blank line, or a row of empty cells only
            continue
        if header is None:
            header = [name.strip() for name in row]
            problem = _check_header(start, header, validator)
            if problem is not None:
                collector.add(problem)
                return
            continue
        if not collector.next_item(start):
            return
        if len(row) != len(header):
            collector.add(LineError(start, None, f"row has {len(row)} cells; the header has {len(header)} columns"))
            continue
        # An empty cell is an absent field, except for required fields, which are then reported as empty.
        obj: dict[str, Any] = {name: cell for name, cell in zip(header, row, strict=True) if cell or name in required}
        problem = validator.decode_lists(start, obj)
        yield from collector.take(problem if problem is not None else validator.check(start, obj))


def _check_header(line: int, header: list[str], validator: _Validator) -> LineError | None:
    if validator.allowed.isdisjoint(header):
        found = ", ".join(repr(_shorten(name)) for name in header[:5]) + (", …" if len(header) > 5 else "")
        return LineError(
            line, None, f"no header row: the first row must name the columns ({validator.allowed_text}); found {found}"
        )
    seen: set[str] = set()
    for name in header:
        if name not in validator.allowed:
            return LineError(
                line, name, f"unknown column {_shorten(name)!r} (allowed columns: {validator.allowed_text})"
            )
        if name in seen:
            return LineError(line, name, f"column {name!r} appears twice in the header")
        seen.add(name)
    for f in validator.fields:
        if f.required and f.name not in seen:
            return LineError(
                line, f.name, f"missing required column {f.name!r}: the first row must be a header naming the columns"
            )
    return None


def _sniff(lines: _Lines) -> Literal["jsonl", "csv"]:
    """Look at the first non-blank character without consuming any line."""
    while True:
        raw = lines.peek_raw()
        if raw is None:
            return "jsonl"
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", "replace")
        head = raw.lstrip(_BOM).lstrip()
        if head:
            return "jsonl" if head.startswith("{") else "csv"


_scan_json = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def _decode(text: str) -> Any:
    """`json.loads`, without its wrapping where a line is one JSON value that starts at its first character (C's
    scanner straight away; the common case); anything else goes through `json.loads` for its exact error."""
    try:
        obj, end = _scan_json(text, 0)
    except (StopIteration, ValueError):
        return json.loads(text)
    if end != len(text) and text[end:].strip(_JSON_SPACE):
        return json.loads(text)
    return obj


#: What JSON counts as white space (``str.isspace`` counts more).
_JSON_SPACE = " \t\n\r"


# -- lines -----------------------------------------------------------------------------------------------------------


class _Lines:
    """The physical lines of a stream, decoded one at a time.

    An undecodable line is yielded with replacement characters, an over-long one as an empty line; either is
    noted in `bad`, which the reader takes with `take_bad` before it takes the next line. Lines are split at
    ``\\n`` only, as JSON and CSV mean them (a raw U+2028 inside a JSON string is not a line break)."""

    def __init__(self, stream: IO[Any], cap: int) -> None:
        self._stream = stream
        self._cap = cap
        self._peeked: list[bytes | str] = []
        #: Physical lines yielded so far: the number of the last one.
        self.count = 0
        self.bad: LineError | None = None

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        raw = self._peeked.pop(0) if self._peeked else self._stream.readline(self._cap)
        if not raw:
            raise StopIteration
        self.count += 1
        if len(raw) >= self._cap and raw[-1:] not in (b"\n", "\n"):
            self._skip_rest_of_line()
            self._note(f"line longer than {self._cap} bytes")
            return "\n"
        if isinstance(raw, bytes):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                self._note(f"invalid UTF-8 (byte {exc.start + 1} of the line)")
                # Decoded anyway, so that a CSV row spanning this line keeps its quotes and ends where it should.
                text = raw.decode("utf-8", "replace")
        else:
            text = raw
        if self.count == 1 and text.startswith(_BOM):
            text = text[1:]
        return text

    def peek_raw(self) -> bytes | str | None:
        """The next raw line not yet peeked at, left to be read again; None at the end."""
        raw = self._stream.readline(self._cap)
        if not raw:
            return None
        self._peeked.append(raw)
        return raw

    def take_bad(self) -> LineError:
        bad, self.bad = self.bad, None
        assert bad is not None
        return bad

    def _note(self, message: str) -> None:
        # Keep the first problem of a row that spans several lines.
        if self.bad is None:
            self.bad = LineError(self.count, None, message)

    def _skip_rest_of_line(self) -> None:
        while True:
            chunk = self._stream.readline(self._cap)
            if not chunk or chunk[-1:] in (b"\n", "\n"):
                return


# -- validation ------------------------------------------------------------------------------------------------------


class _Validator:
    """Checks one decoded object against the task's fields (`inferq.task_specs.TASKS`)."""

    def __init__(
        self, task: TaskName, limits: Limits, mask_tokens: Sequence[str], params: TaskParams | None = None
    ) -> None:
        spec = TASKS[task]
        self.task = task
        self.limits = limits
        self.fields = spec.fields
        self.check_line = spec.check_line
        self.context = LineContext(params=params or spec.params(), mask_tokens=tuple(mask_tokens))
        names = [f.name for f in self.fields]
        #: (name, required, is a list of texts) per field: read once per line, so kept as plain tuples.
        self._fields = tuple((f.name, f.required, f.kind == "texts") for f in self.fields)
        self.allowed = frozenset(["id", *names])
        self.allowed_text = ", ".join(["id", *names])
        self.single_text = spec.single_text
        self.shape = f"an object with fields {', '.join(names)}" + (" (or a string)" if self.single_text else "")
        texts = sum(constants.MAX_LIST_TEXTS if f.kind == "texts" else 1 for f in self.fields)
        self.line_cap = _BYTES_PER_CHAR * (limits.max_text_chars * texts + MAX_ID_CHARS) + _LINE_SLACK_BYTES

    def decode_lists(self, line: int, obj: dict[str, Any]) -> LineError | None:
        """CSV: a list field's cell holds a JSON array; decode it in place."""
        for f in self.fields:
            cell = obj.get(f.name)
            if f.kind != "texts" or not isinstance(cell, str):
                continue
            try:
                obj[f.name] = json.loads(cell)
            except ValueError:
                return LineError(line, f.name, 'must be a JSON array of strings, as in ["a", "b"]')
        return None

    def check(self, line: int, obj: dict[Any, Any]) -> InputRecord | LineError:
        if not self.allowed.issuperset(obj):
            for key in obj:
                if key not in self.allowed:
                    return LineError(
                        line,
                        _printable(str(key)),
                        f"unknown field {_shorten(str(key))!r} (allowed fields: {self.allowed_text})",
                    )

        client_id: str | None = None
        raw_id = obj.get("id")
        if raw_id is not None:
            if isinstance(raw_id, bool) or not isinstance(raw_id, _ID_TYPES):
                return LineError(line, "id", f"must be a string or an integer, got {_type_name(raw_id)}")
            client_id = raw_id if isinstance(raw_id, str) else str(raw_id)
            if len(client_id) > MAX_ID_CHARS:
                return LineError(line, "id", f"is {len(client_id)} characters long; the limit is {MAX_ID_CHARS}")
            unfit = unstorable(client_id)
            if unfit is not None:
                return LineError(line, "id", unfit)
            client_id = client_id or None  # an empty id is no id, as an empty CSV cell is

        data: dict[str, Any] = {}
        max_chars = self.limits.max_text_chars
        for name, required, is_list in self._fields:
            value = obj.get(name)
            if value is None:
                if not required:
                    continue
                if name in obj:
                    return LineError(line, name, f"must be a {'list of strings' if is_list else 'string'}, got null")
                return LineError(line, name, f"missing required field {name!r}")
            # A plain ASCII text that is fine passes the first test alone (the common case, inlined); anything else
            # gets the checks that say what is wrong (a NUL, a lone surrogate among them).
            if is_list or not (
                type(value) is str
                and 0 < len(value) <= max_chars
                and value.isascii()
                and "\x00" not in value
                and not value.isspace()
            ):
                problem = self._texts(line, name, value) if is_list else self._text(line, name, value)
                if problem is not None:
                    return problem
            data[name] = value

        if self.check_line is not None:
            complaint = self.check_line(data, self.context)
            if complaint is not None:
                return LineError(line, complaint[0], complaint[1])
        return InputRecord(line=line, client_id=client_id, data=data)

    def _text(self, line: int, name: str, value: Any) -> LineError | None:
        if not isinstance(value, str):
            return LineError(line, name, f"must be a string, got {_type_name(value)}")
        if not value or value.isspace():
            return LineError(line, name, "must not be empty or whitespace only")
        max_chars = self.limits.max_text_chars
        if len(value) > max_chars:
            return LineError(
                line, name, f"is {len(value)} characters long; the limit is {max_chars} (INFERQ_MAX_TEXT_CHARS)"
            )
        problem = unstorable(value)
        if problem is not None:
            return LineError(line, name, problem)
        return None

    def _texts(self, line: int, name: str, value: Any) -> LineError | None:
        if not isinstance(value, list):
            return LineError(line, name, f"must be a list of strings, got {_type_name(value)}")
        if not value:
            return LineError(line, name, "must not be an empty list")
        if len(value) > constants.MAX_LIST_TEXTS:
            return LineError(line, name, f"has {len(value)} entries; the limit is {constants.MAX_LIST_TEXTS}")
        for i, text in enumerate(value):
            problem = self._text(line, f"{name}[{i}]", text)
            if problem is not None:
                return problem
        return None


_ID_TYPES = (str, int)


@dataclass
class _Collector:
    """Counts item lines against `Limits.max_items` and keeps the errors; valid records pass through (`take`)."""

    limits: Limits
    errors: list[LineError] = field(default_factory=list)
    total_bad: int = 0
    items: int = 0
    truncated: bool = False

    def next_item(self, line: int) -> bool:
        """Count one more item line; False (and an error) when it is beyond the limit."""
        if self.items >= self.limits.max_items:
            limit = self.limits.max_items
            error = LineError(line, None, f"more than {limit} items; the limit is {limit} (INFERQ_MAX_ITEMS)")
            self.truncated = True
            self.total_bad += 1
            # Always shown, even when the other errors fill the list.
            if len(self.errors) >= self.limits.max_errors and self.errors:
                self.errors[-1] = error
            else:
                self.errors.append(error)
            return False
        self.items += 1
        return True

    def add(self, error: LineError) -> None:
        self.total_bad += 1
        if len(self.errors) < self.limits.max_errors:
            self.errors.append(error)

    def take(self, outcome: InputRecord | LineError) -> tuple[InputRecord, ...]:
        """A valid record, to pass on; an error is kept here instead."""
        if isinstance(outcome, InputRecord):
            return (outcome,)
        self.add(outcome)
        return ()


_TYPE_NAMES: dict[type, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    list: "array",
    tuple: "array",
    dict: "object",
    type(None): "null",
}


def _printable(text: str) -> str:
    """``text`` as it may be shown (a field name from the input): a lone surrogate written as its escape."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _shorten(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _type_name(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)
