"""Streaming export of results: JSONL, CSV, NPY (embedding jobs) and Parquet, each written batch by batch as the
items are read, whatever the job's size. ``inferq results JOB --format jsonl|csv|npy|parquet`` runs these; every
format keeps the items that the filters keep (``--label``, ``--min-score``, ``--failed``, a state), in input order.

JSONL
-----
One line per item, its `ResultRow.to_json`: ``{"index", "id", "status", "result", "error"}``. `export_jsonl` (what
``inferq results`` runs) reads a job's items itself and writes each stored result as the JSON text the database
holds, never decoding it: decoding and re-encoding it took ~40% of an export. Its lines parse to exactly what
`write_jsonl` writes for `Client.results` rows; only the result's spelling may differ, as stored (SQLAlchemy's
``json.dumps`` writes ``", "`` and ``": "`` between items and escapes non-ASCII characters as ``\\uXXXX``).

Embedding jobs (tasks with vectors) are the exception: their stored result only describes the vectors, so each
line's ``result`` is built from the stored bytes, in the exported shape of `inferq.results`: ``{"dim", "dtype",
"embedding": [...]}``, or with ``overflow=windows`` ``{"dim", "dtype", "windows": [{"start", "end",
"embedding": [...]}, …]}`` (compact, with ``null`` for an item without a result). Each number is written as
``repr(float(x))`` of the stored value (float16 widened): Python's shortest text of that double, e.g.
``0.10000000149011612`` for float32 ``0.1``; every JSON reader gets the float32 value exactly, and the line is
byte for byte what `write_jsonl` writes for the `Client.results` row.

CSV
---
The top result flattened into typed columns for spreadsheets, the full result as compact JSON in the last column:

=========================  =========================================================================
every task                 ``index, id, status``, then the task's columns, then
                           ``error_code, error_message, result``
classification             ``label, score``
question_answering         ``answer, score, start, end``
fill_mask                  ``token_str, score`` (the best filler of the first mask)
token_classification       ``entity_count, label, score`` (the best entity's label and score)
rerank                     ``score`` (the best document's)
zero_shot_classification   ``label, score``
embedding                  none: ``index, id, status, error_code, error_message, result``, ``result`` holding
                           the exported shape with the vectors, numbers spelled as in JSONL (for vectors
                           at scale, NPY or Parquet)
=========================  =========================================================================

Empty cells stand for missing values (an id not given, no result yet, no error).

NPY (embedding jobs only)
-------------------------
`export_npy` (``--format npy -o OUT.npy``) writes two files:

``OUT.npy``
    An ``N × d`` little-endian float32 matrix (NPY format 1.0, C order; ``numpy.load(path, mmap_mode="r")``
    maps it): one row per vector of every succeeded item the filters keep, in input order: one row per item,
    or with ``overflow=windows`` one per window, in window order. float16 vectors are widened exactly. With no
    vector at all, d is the job's ``dimensions`` parameter, or 0.
``OUT.rows.jsonl`` (`npy_rows_path`: ``.npy`` taken off the name, ``.rows.jsonl`` put on)
    One line per item the filters keep, in input order, saying which rows are its vectors::

        {"index":0,"id":"a","status":"succeeded","row":0,"error":null}
        {"index":1,"id":null,"status":"failed","row":null,"error":{"code":"inference_error","message":"…"}}
        {"index":2,"id":"c","status":"queued","row":null,"error":null}

    With ``overflow=windows``, ``"windows": [{"start": s, "end": e, "row": r}, …]`` (``null`` for an item
    without vectors) stands in place of ``"row"``. An item that failed or has not finished has no row: the
    matrix never holds a row of zeros for it.

Both are written under ``….part`` names and renamed when complete; the header is written first and rewritten
with the final row count. The rows file and the matrix are read from one snapshot of the database and checked to
name the same items' vectors. On PostgreSQL the matrix is written by a second connection that imports the first
one's snapshot (``pg_export_snapshot``), at the same time as the rows file, through a binary COPY cut into rows
with numpy: stored float32 bytes go to the file as they are, with no Python step per number, nor per row when each
item has one vector.

Parquet
-------
`export_parquet` (``--format parquet -o OUT.parquet``; needs pyarrow: ``pip install inferq[parquet]``) writes one
row per item, in row groups of up to 65,536 rows (fewer when vectors would pass 32 MiB) as the items stream:

=========================  =========================================================================
embedding                  ``index`` int64, ``id`` string, ``status`` string, ``embedding``
                           fixed_size_list<float32>[d] (null without a result), ``error_code`` string,
                           ``error_message`` string; with ``overflow=windows`` a ``windows``
                           list<struct<start: int32, end: int32, embedding: fixed_size_list<float32>[d]>>
                           column in place of ``embedding``
other tasks                ``index`` int64, ``id``, ``status``, the task's CSV columns (``label``,
                           ``answer``, ``token_str``: string; ``score``: double; ``start``, ``end``,
                           ``entity_count``: int64), ``error_code``, ``error_message``, ``result``
                           (the stored result's JSON text; null without a result)
=========================  =========================================================================
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import IO, Any, TextIO

import numpy as np
import numpy.typing as npt
from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session

from inferq.errors import ConfigurationError, InvalidParameter
from inferq.schema import Job
from inferq.states import ItemState
from inferq.store import results as stored
from inferq.store.dialect import Dialect, dialect_of
from inferq.store.jobs import job_of
from inferq.task_specs import TASKS, TaskName
from producer import vectors
from producer.results import ALL_ITEMS, ResultFilter, ResultRow

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
    filters: ResultFilter = ALL_ITEMS,
) -> int:
    """Stream the job's items in input order, filtered in SQL as `Client.results` filters them, as `write_jsonl`
    lines; return how many were written. Raises `JobNotFound`.

    Each result is read as its stored JSON text (the database's own ``json`` text on PostgreSQL, the column's
    text on SQLite) and written as it is, without decoding: the line parses to the same values in the same order
    as the decoded row's. Embedding jobs' results are built from the stored vectors (see the module's notes)."""
    job = _job(session, job_id)
    if TASKS[TaskName(job.task)].vectors:
        return _export_vector_jsonl(session, job_id, out, filters)
    # The columns of `ResultRow.to_json` only, in that order.
    rows = stored.result_texts(session, job_id, filters)
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


# -- shared ------------------------------------------------------------------------------------------------------------


def _job(session: Session, job_id: str) -> Job:
    return job_of(session, job_id)


def _vector_job(session: Session, job_id: str, what: str) -> Job:
    """The job, which must be of a task with vectors: else `InvalidParameter`."""
    job = _job(session, job_id)
    task = TaskName(job.task)
    if not TASKS[task].vectors:
        with_vectors = ", ".join(t.value for t, spec in TASKS.items() if spec.vectors)
        raise InvalidParameter(
            f"{what} export is for jobs with vectors ({with_vectors}); job {job_id} is a {task.value} job: "
            "export it as jsonl, csv or parquet",
            field="format",
        )
    return job


def _windows(job: Job) -> bool:
    return bool(job.params.get("overflow") == "windows")


def _vector_shape(conn: Connection, job: Job) -> tuple[int, np.dtype[Any]] | None:
    """The job's vector size and stored dtype, read from one stored vector's description; None before any."""
    described = stored.vector_description(conn, job.id)
    if described is None:
        return None
    return int(described["dim"]), vectors.dtype_of(described["dtype"])


def _dim(job: Job, shape: tuple[int, np.dtype[Any]] | None) -> int:
    """The vectors' size; with none stored, the job's ``dimensions`` parameter (or 0)."""
    return shape[0] if shape is not None else int(job.params.get("dimensions") or 0)


def _part(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def _vector_jsonl_line(
    index: int,
    client_id: str | None,
    status: str,
    stored: Any,
    blob: bytes | None,
    code: str | None,
    message: str | None,
) -> str:
    encode = _compact
    error = "null" if code is None else f'{{"code":{encode(code)},"message":{encode(message or "")}}}'
    return (
        f'{{"index":{index},"id":{"null" if client_id is None else encode(client_id)},"status":{encode(status)},'
        f'"result":{encode(vectors.exported(stored, blob))},"error":{error}}}\n'
    )


def _export_vector_jsonl(session: Session, job_id: str, out: TextIO, filters: ResultFilter) -> int:
    # index, client_id, status, result, vector, error_code, error_message: `_vector_jsonl_line`'s arguments.
    rows = stored.vector_results(session, job_id, filters)
    n = 0
    for batch in rows.partitions():
        lines = [_vector_jsonl_line(*row) for row in batch]
        out.write("".join(lines))
        n += len(lines)
    return n


# -- NPY ---------------------------------------------------------------------------------------------------------------

#: How many bytes of a binary COPY are gathered before they are cut into rows.
_COPY_BATCH_BYTES = 1 << 20


@dataclass(frozen=True)
class NpyExport:
    """What `export_npy` wrote."""

    #: The matrix.
    path: Path
    #: Which rows are whose: one line per item.
    rows_path: Path
    #: Lines in the rows file: the items the filters kept.
    items: int
    #: Rows of the matrix: the vectors of those items.
    rows: int
    #: Columns of the matrix.
    dim: int


def npy_rows_path(path: str | os.PathLike[str]) -> Path:
    """The rows file beside an NPY export: ``OUT.npy`` → ``OUT.rows.jsonl`` (``NAME`` → ``NAME.rows.jsonl``)."""
    path = Path(path)
    base = path.name[:-4] if path.name.lower().endswith(".npy") else path.name
    return path.with_name(base + ".rows.jsonl")


class _Ledger:
    """Which items have vectors and how many bytes each, in order, as a digest: the rows file's reading and the
    matrix's must agree, whatever their batches."""

    def __init__(self) -> None:
        self._digest = hashlib.blake2b(digest_size=16)

    def add(self, indices: Any, lengths: Any) -> None:
        pairs = np.column_stack((np.asarray(indices, dtype="<i8"), np.asarray(lengths, dtype="<i8")))
        self._digest.update(pairs.astype("<i8").tobytes())

    def digest(self) -> bytes:
        return self._digest.digest()


def export_npy(
    session: Session,
    job_id: str,
    path: str | os.PathLike[str],
    filters: ResultFilter = ALL_ITEMS,
) -> NpyExport:
    """Write the job's vectors to ``path`` as an NPY float32 matrix, and beside it (`npy_rows_path`) which rows
    are whose, as the module's notes describe. Raises `JobNotFound`, and `InvalidParameter` for a job whose task
    has no vectors."""
    job = _vector_job(session, job_id, "NPY")
    path = Path(path)
    rows_path = npy_rows_path(path)
    parts = (_part(path), _part(rows_path))
    bind = session.get_bind()
    try:
        with open(parts[0], "wb") as npy, open(parts[1], "w", encoding="utf-8", newline="") as side:
            if isinstance(bind, Engine) and dialect_of(bind) is Dialect.POSTGRESQL:
                items, rows, dim = _npy_postgresql(bind, job, filters, npy, side)
            else:
                items, rows, dim = _npy_one_connection(session.connection(), job, filters, npy, side)
            npy.seek(0)
            npy.write(vectors.npy_header(rows, dim))
        os.replace(parts[0], path)
        os.replace(parts[1], rows_path)
    except BaseException:
        for part in parts:
            part.unlink(missing_ok=True)
        raise
    return NpyExport(path=path, rows_path=rows_path, items=items, rows=rows, dim=dim)


def _npy_one_connection(
    conn: Connection, job: Job, filters: ResultFilter, npy: IO[bytes], side: TextIO
) -> tuple[int, int, int]:
    """The rows file, then the matrix, on one connection in one transaction (one snapshot)."""
    shape = _vector_shape(conn, job)
    dim = _dim(job, shape)
    npy.write(vectors.npy_header(0, dim))
    batches = stored.rows_file_rows(conn, job.id, filters, windows=_windows(job))
    items, rows, ledger = _write_rows_file(batches, job, shape, side)
    matrix_rows, matrix_ledger = _write_matrix(_vector_batches(conn, job, shape, filters), npy, dim)
    _check_same(rows, ledger, matrix_rows, matrix_ledger)
    return items, rows, dim


def _npy_postgresql(
    bind: Engine, job: Job, filters: ResultFilter, npy: IO[bytes], side: TextIO
) -> tuple[int, int, int]:
    """The rows file on a connection of its own in a repeatable-read transaction, while a second connection in the
    same snapshot (``pg_export_snapshot``) writes the matrix through a binary COPY: each mostly waits on the
    server, so the two overlap."""
    with stored.repeatable_read(bind) as conn:
        snapshot = stored.export_snapshot(conn)
        stored.in_index_order(conn)
        shape = _vector_shape(conn, job)
        dim = _dim(job, shape)
        npy.write(vectors.npy_header(0, dim))
        # The snapshot lives while this transaction does: it ends after the COPY's (a failure here waits too).
        with ThreadPoolExecutor(1, thread_name_prefix="inferq-npy") as pool:
            matrix = pool.submit(_copy_matrix, bind, snapshot, job, shape, filters, npy, dim)
            pages = stored.rows_file_pages(conn, job.id, filters, windows=_windows(job))
            items, rows, ledger = _write_rows_file(pages, job, shape, side)
            matrix_rows, matrix_ledger = matrix.result()
    _check_same(rows, ledger, matrix_rows, matrix_ledger)
    return items, rows, dim


def _copy_matrix(
    bind: Engine,
    snapshot: str,
    job: Job,
    shape: tuple[int, np.dtype[Any]] | None,
    filters: ResultFilter,
    npy: IO[bytes],
    dim: int,
) -> tuple[int, _Ledger]:
    with stored.repeatable_read(bind) as conn:
        stored.use_snapshot(conn, snapshot)
        stored.in_index_order(conn)
        return _write_matrix(_copy_batches(conn, job, shape, filters), npy, dim)


def _check_same(rows: int, ledger: _Ledger, matrix_rows: int, matrix_ledger: _Ledger) -> None:
    if rows != matrix_rows or ledger.digest() != matrix_ledger.digest():
        raise RuntimeError(
            f"the rows file counts {rows} vectors and the matrix holds {matrix_rows}, or not the same items' vectors "
            "(were items deleted or rewritten during the export?)"
        )


def _write_rows_file(
    batches: Iterable[Sequence[Any]], job: Job, shape: tuple[int, np.dtype[Any]] | None, side: TextIO
) -> tuple[int, int, _Ledger]:
    """One line per item of `stored.rows_file_rows`' batches; return how many, the rows they name, and the ledger of
    vectors."""
    windows = _windows(job)
    row_bytes = shape[0] * shape[1].itemsize if shape is not None else 0
    encode = _compact
    succeeded = ItemState.SUCCEEDED
    statuses = {s.value: encode(s.value) for s in ItemState}
    ledger = _Ledger()
    items = row = 0
    for batch in batches:
        lines = []
        indices: list[int] = []
        lengths: list[int] = []
        for index, client_id, status, nbytes, code, message, *result in batch:
            where = "null"
            if status == succeeded and nbytes is not None:
                count, rest = divmod(nbytes, row_bytes) if row_bytes else (0, nbytes)
                spans = result[0].get("windows") if windows and isinstance(result[0], dict) else None
                expected = len(spans) if spans is not None else 1
                if rest or count != expected:
                    raise ValueError(
                        f"item {index}: a stored vector of {nbytes} bytes, where {expected} vector(s) of "
                        f"{row_bytes} bytes were expected"
                    )
                if spans is not None:
                    where = encode(
                        [{"start": w["start"], "end": w["end"], "row": row + i} for i, w in enumerate(spans)]
                    )
                else:
                    where = str(row)
                row += count
                indices.append(index)
                lengths.append(nbytes)
            error = "null" if code is None else f'{{"code":{encode(code)},"message":{encode(message or "")}}}'
            lines.append(
                f'{{"index":{index},"id":{"null" if client_id is None else encode(client_id)},'
                f'"status":{statuses.get(status) or encode(status)},"{"windows" if windows else "row"}":{where},'
                f'"error":{error}}}\n'
            )
        side.write("".join(lines))
        ledger.add(indices, lengths)
        items += len(lines)
    return items, row, ledger


Batch = tuple[npt.NDArray[np.int64], list[int], bytes]


def _write_matrix(batches: Iterable[Batch], npy: IO[bytes], dim: int) -> tuple[int, _Ledger]:
    """Append the batches' float32 bytes to the matrix; return its rows and the ledger of vectors."""
    ledger = _Ledger()
    written = 0
    for indices, lengths, data in batches:
        npy.write(data)
        ledger.add(indices, lengths)
        written += len(data)
    row_bytes = dim * vectors.FLOAT32.itemsize
    return (written // row_bytes if row_bytes else 0), ledger


def _vector_batches(
    conn: Connection, job: Job, shape: tuple[int, np.dtype[Any]] | None, filters: ResultFilter
) -> Iterator[Batch]:
    """The vectors through the Core, a batch of rows at a time."""
    if shape is None:
        return
    dtype = shape[1]
    for batch in stored.vector_rows(conn, job.id, filters):
        blobs = [blob for _, blob in batch]
        yield (
            np.asarray([index for index, _ in batch], dtype=np.int64),
            [len(blob) for blob in blobs],
            vectors.as_float32(b"".join(blobs), dtype),
        )


def _copy_batches(
    conn: Connection, job: Job, shape: tuple[int, np.dtype[Any]] | None, filters: ResultFilter
) -> Iterator[Batch]:
    """PostgreSQL: the vectors through a binary COPY, cut into rows a few MiB at a time (`vectors.CopyVectors`)."""
    if shape is None:
        return
    dim, dtype = shape
    parser = vectors.CopyVectors(dtype, None if _windows(job) else dim * dtype.itemsize)
    with stored.copy_vectors(conn, job.id, filters) as copy:
        blocks: list[bytes | memoryview] = []
        size = 0
        for block in copy:
            blocks.append(block)
            size += len(block)
            if size >= _COPY_BATCH_BYTES:
                yield parser.feed(blocks)
                blocks, size = [], 0
        yield parser.feed(blocks)
    parser.finish()


# -- Parquet -----------------------------------------------------------------------------------------------------------

#: Rows per Parquet row group at most; fewer when the group's vectors pass `_PARQUET_GROUP_BYTES`.
_PARQUET_GROUP_ROWS = 65_536
_PARQUET_GROUP_BYTES = 32 << 20
#: `ResultRow` attributes of the CSV columns (`stored.TOP_COLUMNS`) → Arrow type name.
_TOP_TYPES: dict[str, str] = {
    "label": "string",
    "score": "float64",
    "answer": "string",
    "start": "int64",
    "end": "int64",
    "entity_count": "int64",
}


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise ConfigurationError("Parquet export needs pyarrow: pip install inferq[parquet]") from None
    return pyarrow, pyarrow.parquet


def export_parquet(
    session: Session,
    job_id: str,
    path: str | os.PathLike[str],
    filters: ResultFilter = ALL_ITEMS,
) -> int:
    """Write the job's items to ``path`` as Parquet (columns in the module's notes), a row group at a time; return
    how many rows were written. Raises `JobNotFound`, and `ConfigurationError` without pyarrow."""
    pa, pq = _pyarrow()
    job = _job(session, job_id)
    path = Path(path)
    part = _part(path)
    try:
        if TASKS[TaskName(job.task)].vectors:
            n = _parquet_vectors(pa, pq, session, job, filters, part)
        else:
            n = _parquet_results(pa, pq, session, job, filters, part)
        os.replace(part, path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return n


def _fixed_lists(pa: Any, data: bytes, n: int, dim: int, valid: list[bool] | None = None) -> Any:
    """``n`` fixed_size_list<float32>[dim] values from their float32 bytes (``dim`` per value, nulls included)."""
    values = pa.array(np.frombuffer(data, dtype=vectors.FLOAT32), type=pa.float32())
    validity = None if valid is None or all(valid) else pa.py_buffer(np.packbits(valid, bitorder="little").tobytes())
    return pa.Array.from_buffers(pa.list_(pa.float32(), dim), n, [validity], children=[values])


def _parquet_vectors(pa: Any, pq: Any, session: Session, job: Job, filters: ResultFilter, path: Path) -> int:
    conn = session.connection()
    stored.in_index_order(conn)
    shape = _vector_shape(conn, job)
    dim = _dim(job, shape)
    dtype = shape[1] if shape is not None else vectors.FLOAT32
    windows = _windows(job)
    vector_type = pa.list_(pa.float32(), dim)
    window_type = pa.struct([("start", pa.int32()), ("end", pa.int32()), ("embedding", vector_type)])
    schema = pa.schema(
        [
            ("index", pa.int64()),
            ("id", pa.string()),
            ("status", pa.string()),
            ("windows", pa.list_(window_type)) if windows else ("embedding", vector_type),
            ("error_code", pa.string()),
            ("error_message", pa.string()),
        ]
    )
    rows = stored.vector_results(session, job.id, filters)
    succeeded = ItemState.SUCCEEDED
    empty = bytes(dim * vectors.FLOAT32.itemsize)
    written = 0

    with pq.ParquetWriter(path, schema) as writer:
        group: list[list[Any]] = [[] for _ in range(5)]  # index, id, status, error_code, error_message
        parts: list[bytes] = []
        valid: list[bool] = []
        offsets: list[int | None] = []
        starts: list[int] = []
        ends: list[int] = []
        size = 0

        def flush() -> None:
            nonlocal parts, valid, offsets, starts, ends, size, written
            n = len(group[0])
            if not n:
                return
            if windows:
                embeddings = _fixed_lists(pa, b"".join(parts), len(starts), dim)
                spans = pa.StructArray.from_arrays(
                    [pa.array(starts, pa.int32()), pa.array(ends, pa.int32()), embeddings], fields=list(window_type)
                )
                vector_column = pa.ListArray.from_arrays(
                    pa.array([*offsets, len(starts)], pa.int32()), spans, type=pa.list_(window_type)
                )
            else:
                vector_column = _fixed_lists(pa, b"".join(parts), n, dim, valid)
            index, ids, statuses, codes, messages = group
            table = pa.Table.from_arrays(
                [
                    pa.array(index, pa.int64()),
                    pa.array(ids, pa.string()),
                    pa.array(statuses, pa.string()),
                    vector_column,
                    pa.array(codes, pa.string()),
                    pa.array(messages, pa.string()),
                ],
                schema=schema,
            )
            writer.write_table(table)
            written += n
            for column in group:
                column.clear()
            parts, valid, offsets, starts, ends, size = [], [], [], [], [], 0

        for batch in rows.partitions():
            for index, client_id, status, described, blob, code, message in batch:
                has = status == succeeded and blob is not None
                if windows:
                    if has:
                        decoded = vectors.decode(described, blob)
                        offsets.append(len(starts))
                        starts.extend(int(w["start"]) for w in described["windows"])
                        ends.extend(int(w["end"]) for w in described["windows"])
                        parts.append(decoded.tobytes())
                    else:
                        offsets.append(None)
                else:
                    if has and len(blob) != dim * dtype.itemsize:
                        raise ValueError(f"item {index}: a stored vector of {len(blob)} bytes, not {dim} {dtype}")
                    parts.append(vectors.as_float32(blob, dtype) if has else empty)
                    valid.append(has)
                size += len(parts[-1]) if has else 0
                for column, value in zip(group, (index, client_id, status, code, message), strict=True):
                    column.append(value)
                if len(group[0]) >= _PARQUET_GROUP_ROWS or size >= _PARQUET_GROUP_BYTES:
                    flush()
        flush()
    return written


def _parquet_results(pa: Any, pq: Any, session: Session, job: Job, filters: ResultFilter, path: Path) -> int:
    spec = TASKS[TaskName(job.task)]
    tops = [(name, attr, _TOP_TYPES[attr]) for name, attr in spec.csv_columns]
    schema = pa.schema(
        [
            ("index", pa.int64()),
            ("id", pa.string()),
            ("status", pa.string()),
            *((name, getattr(pa, type_name)()) for name, _, type_name in tops),
            ("error_code", pa.string()),
            ("error_message", pa.string()),
            ("result", pa.string()),
        ]
    )
    rows = stored.top_column_rows(session, job.id, filters, [attr for _, attr, _ in tops])
    written = 0
    with pq.ParquetWriter(path, schema) as writer:
        group: list[tuple[Any, ...]] = []

        def flush() -> None:
            nonlocal written
            if not group:
                return
            cells = list(zip(*group, strict=True))
            # A stored JSON null (a failed item's result) is no result, as SQL NULL is.
            cells[-1] = tuple(None if text is None or text == "null" else text for text in cells[-1])
            arrays = [pa.array(list(cell), field.type) for cell, field in zip(cells, schema, strict=True)]
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
            written += len(group)
            group.clear()

        for batch in rows.partitions():
            for row in batch:
                group.append(tuple(row))
                if len(group) >= _PARQUET_GROUP_ROWS:
                    flush()
        flush()
    return written
