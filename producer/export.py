"""Streaming export of results as JSONL or CSV: one row written per row read, whatever the job's size.

JSONL holds each row's `ResultRow.to_json`: ``{"index", "id", "status", "result", "error"}``. `export_jsonl` (what
``inferq results`` runs) reads a job's items itself and writes each stored result as the JSON text the database
holds, never decoding it: decoding and re-encoding it took ~40% of an export. Its lines parse to exactly what
`write_jsonl` writes for `Client.results` rows; only the result's spelling may differ, as stored (SQLAlchemy's
``json.dumps`` writes ``", "`` and ``": "`` between items and escapes non-ASCII characters as ``\\uXXXX``).

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

from sqlalchemy import Text, cast
from sqlalchemy.orm import Session

from inferq.errors import JobNotFound
from inferq.schema import Item, Job
from inferq.states import ItemState
from inferq.tasks import TASKS, TaskName
from producer.results import ResultRow, item_rows

_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def csv_header(task: TaskName) -> list[str]:
    return ["index", "id", "status", *(c for c, _ in TASKS[task].csv_columns), "error_code", "error_message", "result"]


def write_jsonl(rows: Iterable[ResultRow], out: TextIO) -> int:
    """Write one compact JSON object per row (UTF-8 characters as they are); return how many rows were written."""
    write = out.write
    encode = _compact
    n = 0
    for row in rows:
        write(encode(row.to_json()) + "\n")
        n += 1
    return n


def export_jsonl(
    session: Session,
    job_id: str,
    out: TextIO,
    *,
    label: str | None = None,
    min_score: float | None = None,
    failed: bool = False,
    state: ItemState | None = None,
) -> int:
    """Stream the job's items in input order, filtered in SQL as `Client.results` filters them, as `write_jsonl`
    lines; return how many were written. Raises `JobNotFound`.

    Each result is read as its stored JSON text (the database's own ``json`` text on PostgreSQL, the column's
    text on SQLite) and written as it is, without decoding: the line parses to the same values in the same order
    as the decoded row's."""
    if session.get(Job, job_id) is None:
        raise JobNotFound(f"no job {job_id!r}")
    # The columns of `ResultRow.to_json` only.
    columns = (Item.index, Item.client_id, Item.state, cast(Item.result, Text), Item.error_code, Item.error_message)
    rows = item_rows(session, job_id, columns, label=label, min_score=min_score, failed=failed, state=state)
    write = out.write
    encode = _compact
    statuses = {s.value: encode(s.value) for s in ItemState}
    n = 0
    for batch in rows.partitions():
        lines = []
        for index, client_id, status, result, code, message in batch:
            if result is None:  # SQL NULL: no result yet (a stored JSON null arrives as the text "null")
                result = "null"
            elif "\n" in result or "\r" in result:
                # JSON allows line breaks between tokens (inside a string it does not): they would split the line.
                result = encode(json.loads(result))
            error = "null" if code is None else f'{{"code":{encode(code)},"message":{encode(message or "")}}}'
            lines.append(
                f'{{"index":{index},"id":{"null" if client_id is None else encode(client_id)},'
                f'"status":{statuses.get(status) or encode(status)},"result":{result},"error":{error}}}\n'
            )
        write("".join(lines))
        n += len(lines)
    return n


def write_csv(rows: Iterable[ResultRow], out: TextIO, task: TaskName) -> int:
    """Write a header and one CSV row per row; return how many rows were written (the header not counted).

    Open a file for it with ``newline=""``, as for any `csv.writer`."""
    writer = csv.writer(out)
    writer.writerow(csv_header(task))
    writerow = writer.writerow
    leading = attrgetter("index", "id", "status", *(attr for _, attr in TASKS[task].csv_columns))
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
