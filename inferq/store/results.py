"""The reads of a job's items behind results, export (JSONL, CSV, NPY, Parquet) and the job page's progress.

Item reads stream: a Core result on the caller's connection fetched in batches of `constants.EXPORT_FETCH_ROWS`
(the ORM's per-row loading would cost more than the rest), in input order, filtered in SQL by a `ResultFilter`.
Each read's columns are labelled; a caller reads them by name (``row.client_id``, ``.mappings()``), or, on an
export's hot path, unpacks them in the order the read's docstring gives. PostgreSQL has faster paths for the NPY
export (keyset pages read whole by the driver, a binary COPY out in an exported snapshot), chosen by `dialect_of`.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Result, Row, Select, String, Text, cast, func, select, type_coerce
from sqlalchemy.orm import Session

from inferq import constants
from inferq.schema import Item, Job
from inferq.states import ItemState
from inferq.store.dialect import Dialect, dialect_of

#: An item's state as the stored string, for reads of many rows (results, exports): without the enum conversion per
#: row, which halved an export's speed. `ItemState` members equal these strings.
STORED_STATE = type_coerce(Item.state, String(16)).label("status")


@dataclass(frozen=True, slots=True)
class ResultFilter:
    """Which of a job's items a read keeps, filtered in SQL on the typed columns: what ``inferq results`` takes as
    ``--label``, ``--min-score`` and ``--failed``, `Client.results` as keywords, and every export as this object."""

    #: Only items whose top label is this one.
    label: str | None = None
    #: Only items whose top score is at least this.
    min_score: float | None = None
    #: Only failed items.
    failed: bool = False
    #: Only items in this state.
    state: ItemState | None = None

    def apply(self, query: Select[Any]) -> Select[Any]:
        """``query`` (of items) with this filter's conditions."""
        if self.label is not None:
            query = query.where(Item.label == self.label)
        if self.min_score is not None:
            query = query.where(Item.score >= self.min_score)
        if self.failed:
            query = query.where(Item.state == ItemState.FAILED)
        if self.state is not None:
            query = query.where(Item.state == self.state)
        return query


#: Every item.
ALL_ITEMS = ResultFilter()

#: The typed columns of an item's top result, by the `ResultRow` attribute (and CSV column source) they fill.
TOP_COLUMNS: dict[str, Any] = {
    "label": Item.label,
    "score": Item.score,
    "answer": Item.answer,
    "start": Item.start_char,
    "end": Item.end_char,
    "entity_count": Item.entity_count,
}

#: An item's stored result as the JSON text the database holds (never decoded).
_RESULT_TEXT = cast(Item.result, Text).label("result")


def _stream(conn: Connection, query: Select[Any]) -> Result[*tuple[Any, ...]]:
    return conn.execute(query.execution_options(yield_per=constants.EXPORT_FETCH_ROWS))


def item_query(job_id: str, columns: Sequence[Any], filters: ResultFilter = ALL_ITEMS) -> Select[Any]:
    """``columns`` of the job's items that ``filters`` keep, in input order (not executed)."""
    return filters.apply(select(*columns).where(Item.job_id == job_id).order_by(Item.index))


# -- results and the text exports --------------------------------------------------------------------------------------


def result_rows(
    session: Session, job_id: str, filters: ResultFilter, *, with_vectors: bool
) -> Result[*tuple[Any, ...]]:
    """Every column of a `ResultRow`: ``index, client_id, status, result, error_code, error_message, label, score,
    answer, start_char, end_char, entity_count``, and ``vector`` when ``with_vectors``; the result decoded."""
    columns: tuple[Any, ...] = (
        Item.index,
        Item.client_id,
        STORED_STATE,
        Item.result,
        Item.error_code,
        Item.error_message,
        Item.label,
        Item.score,
        Item.answer,
        Item.start_char,
        Item.end_char,
        Item.entity_count,
    )
    if with_vectors:
        columns += (Item.vector,)
    return _stream(session.connection(), item_query(job_id, columns, filters))


def result_texts(session: Session, job_id: str, filters: ResultFilter) -> Result[*tuple[Any, ...]]:
    """``index, client_id, status, result, error_code, error_message``, the result as its stored JSON text (the
    database's own ``json`` text on PostgreSQL, the column's text on SQLite; ``None`` for SQL NULL)."""
    columns = (Item.index, Item.client_id, STORED_STATE, _RESULT_TEXT, Item.error_code, Item.error_message)
    return _stream(session.connection(), item_query(job_id, columns, filters))


def vector_results(session: Session, job_id: str, filters: ResultFilter) -> Result[*tuple[Any, ...]]:
    """``index, client_id, status, result, vector, error_code, error_message``: the stored description of the
    vectors (decoded) and their bytes."""
    columns = (Item.index, Item.client_id, STORED_STATE, Item.result, Item.vector, Item.error_code, Item.error_message)
    return _stream(session.connection(), item_query(job_id, columns, filters))


def top_column_rows(
    session: Session, job_id: str, filters: ResultFilter, tops: Sequence[str]
) -> Result[*tuple[Any, ...]]:
    """``index, client_id, status``, the `TOP_COLUMNS` named by ``tops`` (labelled by those names), then
    ``error_code, error_message, result`` (the result as its stored JSON text)."""
    columns = (
        Item.index,
        Item.client_id,
        STORED_STATE,
        *(TOP_COLUMNS[name].label(name) for name in tops),
        Item.error_code,
        Item.error_message,
        _RESULT_TEXT,
    )
    return _stream(session.connection(), item_query(job_id, columns, filters))


# -- vectors (NPY, Parquet) --------------------------------------------------------------------------------------------


def vector_description(conn: Connection, job_id: str) -> Any:
    """The stored result (``{"dim", "dtype", …}``) of one succeeded item with a vector; ``None`` before any."""
    return conn.execute(
        select(Item.result)
        .where(Item.job_id == job_id, Item.state == ItemState.SUCCEEDED, Item.vector.is_not(None))
        .limit(1)
    ).scalar()


def _rows_file_query(job_id: str, filters: ResultFilter, windows: bool) -> Select[Any]:
    columns: list[Any] = [
        Item.index,
        Item.client_id,
        STORED_STATE,
        func.length(Item.vector).label("vector_bytes"),
        Item.error_code,
        Item.error_message,
    ]
    if windows:
        columns.append(Item.result)
    return item_query(job_id, columns, filters)


def rows_file_rows(conn: Connection, job_id: str, filters: ResultFilter, *, windows: bool) -> Iterator[Sequence[Any]]:
    """Batches of what an NPY export's rows file says of each item: ``index, client_id, status, vector_bytes,
    error_code, error_message``, and ``result`` with ``windows`` (the stored windows' spans)."""
    return _stream(conn, _rows_file_query(job_id, filters, windows)).partitions()


#: Rows per page of `rows_file_pages`.
_PAGE_ROWS = 20_000


def rows_file_pages(conn: Connection, job_id: str, filters: ResultFilter, *, windows: bool) -> Iterator[Sequence[Any]]:
    """PostgreSQL: the rows of `rows_file_rows` a page at a time, each page read whole by the driver (keyset
    pagination on the index): a third of the time that a server-side cursor and the Core's rows take, with as
    little held at once."""
    query = _rows_file_query(job_id, filters, windows)
    raw = conn.connection.driver_connection
    last = -1
    while True:
        compiled = query.where(Item.index > last).limit(_PAGE_ROWS).compile(dialect=conn.dialect)
        with raw.cursor(binary=True) as cursor:  # type: ignore[union-attr]
            page = cursor.execute(str(compiled), compiled.params).fetchall()
        if page:
            yield page
        if len(page) < _PAGE_ROWS:
            return
        last = page[-1][0]  # the index: the query's first column, the page's order


def vector_query(job_id: str, filters: ResultFilter) -> Select[Any]:
    """(``index``, ``vector``) of the items with vectors that the filters keep, in input order (not executed)."""
    return item_query(job_id, (Item.index, Item.vector), filters).where(
        Item.state == ItemState.SUCCEEDED, Item.vector.is_not(None)
    )


def vector_rows(conn: Connection, job_id: str, filters: ResultFilter) -> Iterator[Sequence[Row[*tuple[Any, ...]]]]:
    """Batches of `vector_query`'s rows through the Core."""
    return _stream(conn, vector_query(job_id, filters)).partitions()


@contextmanager
def copy_vectors(conn: Connection, job_id: str, filters: ResultFilter) -> Iterator[Iterator[Any]]:
    """PostgreSQL: `vector_query` as a binary COPY out: its blocks of bytes, as the server sends them."""
    compiled = vector_query(job_id, filters).compile(dialect=conn.dialect)
    raw = conn.connection.driver_connection
    with raw.cursor() as cursor, cursor.copy(f"COPY ({compiled}) TO STDOUT (FORMAT binary)", compiled.params) as copy:  # type: ignore[union-attr]
        yield iter(copy)


@contextmanager
def repeatable_read(bind: Engine) -> Iterator[Connection]:
    """A connection of its own in a repeatable-read transaction (one snapshot for all its reads), ended on exit."""
    with bind.connect() as conn:
        conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            yield conn


#: What ``pg_export_snapshot()`` returns: hexadecimal fields joined by dashes (``00000003-0000001B-1``).
_SNAPSHOT_ID = re.compile(r"[0-9A-Fa-f]+(?:-[0-9A-Fa-f]+)+")


def export_snapshot(conn: Connection) -> str:
    """PostgreSQL: the id of this (repeatable-read) transaction's snapshot, for another connection to share."""
    return str(conn.exec_driver_sql("SELECT pg_export_snapshot()").scalar_one())


def use_snapshot(conn: Connection, snapshot: str) -> None:
    """PostgreSQL: run this (repeatable-read) transaction in the snapshot ``snapshot`` (`export_snapshot`)."""
    # SET takes no bound parameters: the snapshot id (as pg_export_snapshot writes it) goes in as a literal quoted by
    # psycopg, after a check of its form.
    if not _SNAPSHOT_ID.fullmatch(snapshot):
        raise RuntimeError(f"unexpected snapshot id {snapshot!r}")
    from psycopg import sql

    statement = sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot))
    conn.connection.driver_connection.execute(statement)  # type: ignore[union-attr]


def in_index_order(conn: Connection) -> None:
    """PostgreSQL: read this transaction's items through the primary key (job, index), which yields them in input
    order, rather than sorting them. Right after a job finishes, its items' statistics are stale (autovacuum has not
    analyzed them), and the planner, expecting a handful of rows, sorts the job's vectors, 150 MB for 100k
    384-d vectors, in temporary files: half of an NPY export's time. No effect elsewhere."""
    if dialect_of(conn) is Dialect.POSTGRESQL:
        conn.exec_driver_sql("SET LOCAL enable_sort = off")


# -- progress ----------------------------------------------------------------------------------------------------------

_ENDED = (ItemState.SUCCEEDED, ItemState.FAILED)


def job_started_at(session: Session, job_id: str) -> dt.datetime | None:
    """When the job started (as stored: SQLite's naive), if it has."""
    return session.scalar(select(Job.started_at).where(Job.id == job_id))


def chunk_writes(session: Session, job_id: str) -> Sequence[Row[dt.datetime | None, int]]:
    """``finished_at, items`` of each stored write of the job's results (one ``finished_at`` a write), oldest
    first. SQLite may hand ``finished_at`` back as text."""
    return session.execute(
        select(Item.finished_at, func.count().label("items"))
        .where(Item.job_id == job_id, Item.state.in_(_ENDED), Item.finished_at.is_not(None))
        .group_by(Item.finished_at)
        .order_by(Item.finished_at)
    ).all()


def error_counts(session: Session, job_id: str, limit: int) -> Sequence[Row[str | None, int, str | None]]:
    """``error_code, items, sample_message`` of the job's failed items by code, most frequent first (ties by code),
    at most ``limit`` codes; the sample is the smallest message of the code, so every read shows the same one."""
    count = func.count().label("items")
    return session.execute(
        select(Item.error_code, count, func.min(Item.error_message).label("sample_message"))
        .where(Item.job_id == job_id, Item.state == ItemState.FAILED)
        .group_by(Item.error_code)
        .order_by(count.desc(), Item.error_code)
        .limit(limit)
    ).all()
