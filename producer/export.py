"""Streaming export of results as JSONL or CSV: one row written per row read, whatever the job's size.

JSONL holds each row's `ResultRow.to_json`: ``{"index", "id", "status", "result", "error"}``.
CSV flattens the top result into typed columns for spreadsheets, and keeps the full result as JSON in its last column:

=========================  =========================================================================
every task                 ``index, id, status``, then the task's columns, then
                           ``error_code, error_message, result``
classification             ``label, score``
question_answering         ``answer, score, start, end``
fill_mask                  ``token_str, score`` (the best filler of the first mask)
token_classification       ``entity_count, label, score`` (the best entity's label and score)
=========================  =========================================================================

Empty cells stand for missing values (an id not given, no result yet, no error).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from operator import attrgetter
from typing import TextIO

from inferq.tasks import TaskName
from producer.results import ResultRow

#: Per task: the CSV columns between ``status`` and ``error_code``, and the `ResultRow` attribute of each.
CSV_TASK_COLUMNS: dict[TaskName, tuple[tuple[str, str], ...]] = {
    TaskName.CLASSIFICATION: (("label", "label"), ("score", "score")),
    TaskName.QUESTION_ANSWERING: (("answer", "answer"), ("score", "score"), ("start", "start"), ("end", "end")),
    TaskName.FILL_MASK: (("token_str", "label"), ("score", "score")),
    TaskName.TOKEN_CLASSIFICATION: (("entity_count", "entity_count"), ("label", "label"), ("score", "score")),
}

_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def csv_header(task: TaskName) -> list[str]:
    return ["index", "id", "status", *(c for c, _ in CSV_TASK_COLUMNS[task]), "error_code", "error_message", "result"]


def write_jsonl(rows: Iterable[ResultRow], out: TextIO) -> int:
    """Write one compact JSON object per row (UTF-8 characters as they are); return how many rows were written."""
    write = out.write
    encode = _compact
    n = 0
    for row in rows:
        write(encode(row.to_json()) + "\n")
        n += 1
    return n


def write_csv(rows: Iterable[ResultRow], out: TextIO, task: TaskName) -> int:
    """Write a header and one CSV row per row; return how many rows were written (the header not counted).

    Open a file for it with ``newline=""``, as for any `csv.writer`."""
    writer = csv.writer(out)
    writer.writerow(csv_header(task))
    writerow = writer.writerow
    leading = attrgetter("index", "id", "status", *(attr for _, attr in CSV_TASK_COLUMNS[task]))
    encode = _compact
    n = 0
    for row in rows:
        error = row.error
        result = row.result
        # csv.writer writes None as an empty cell.
        writerow(
            (
                *leading(row),
                error.get("code") if error else None,
                error.get("message") if error else None,
                None if result is None else encode(result),
            )
        )
        n += 1
    return n
