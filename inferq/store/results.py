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

from sqlalchemy import (
    Connection,
    Engine,
    Row,
    Select,
    String,
    Text,
    and_,
    bindparam,
    case,
    cast,
    func,
    literal,
    select,
    type_coerce,
)
from sqlalchemy import Result as Rows
from sqlalchemy.orm import Session

from inferq import constants
from inferq.errors import DeadlineExpired
from inferq.schema import Item, Job, Result
from inferq.states import STORED_ITEM_STATES, UNRUN_ITEM_STATE, ItemState, JobState, item_state_of
from inferq.store.dialect import Dialect, dialect_of

#: What an item without a result is, from its job's state (`inferq.states.UNRUN_ITEM_STATE`), as the state's string.
_UNRUN_STATE = case(
    *((Job.state == job, literal(item.value)) for job, item in UNRUN_ITEM_STATE.items()),
    else_=literal(ItemState.QUEUED.value),
)

#: An item's state as a string (`inferq.states.item_state_of` in SQL): its result's, else what its job's state makes
#: it. Read as a string, without the enum conversion per row, which halved an export's speed; `ItemState` members
#: equal these strings.
ITEM_STATE = func.coalesce(type_coerce(Result.state, String(16)), _UNRUN_STATE)
STORED_STATE = ITEM_STATE.label("status")

#: The error message of an item its job's deadline left without a result.
EXPIRED_MESSAGE = "the job's deadline passed before this item ran"

#: An item's error code and message: its result's, else, in an expired job, the deadline's (`DeadlineExpired`).
_EXPIRED = and_(Result.state.is_(None), Job.state == JobState.EXPIRED)
ERROR_CODE = func.coalesce(Result.error_code, case((_EXPIRED, literal(DeadlineExpired.code)))).label("error_code")
ERROR_MESSAGE = func.coalesce(Result.error_message, case((_EXPIRED, literal(EXPIRED_MESSAGE)))).label("error_message")


#: A failed result, with ``'failed'`` in the statement's text (SQLAlchemy renders the value at execution: no bound
#: parameter), so that PostgreSQL may match the partial index of failed results (``ix_results_job_failed``) even in a
#: prepared statement's generic plan.
IS_FAILED = Result.state == bindparam("failed_state", ItemState.FAILED, type_=Result.state.type, literal_execute=True)


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

    def apply(self, query: Select[Any], *, results_only: bool = False) -> Select[Any]:
        """``query`` (of items joined to their results and their job, `item_query`; of results alone with
        ``results_only``) with this filter's conditions. A stored state is tested on the results' own column (failed:
        `IS_FAILED`, the partial index of failed results; succeeded: the primary key's range of the job); one that
        follows the job's on the job's row."""
        if self.label is not None:
            query = query.where(Result.label == self.label)
        if self.min_score is not None:
            query = query.where(Result.score >= self.min_score)
        if self.failed or self.state is ItemState.FAILED:
            query = query.where(IS_FAILED)
        if self.state is None or self.state is ItemState.FAILED:
            pass
        elif self.state in STORED_ITEM_STATES or results_only:
            query = query.where(Result.state == self.state)
        else:
            query = query.where(Result.state.is_(None), _UNRUN_STATE.in_([self.state.value]))
        return query


#: Every item.
ALL_ITEMS = ResultFilter()

#: The typed columns of an item's top result, by the `ResultRow` attribute (and CSV column source) they fill.
TOP_COLUMNS: dict[str, Any] = {
    "label": Result.label,
    "score": Result.score,
    "answer": Result.answer,
    "start": Result.start_char,
    "end": Result.end_char,
    "entity_count": Result.entity_count,
}

#: An item's stored result as the JSON text the database holds (never decoded).
_RESULT_TEXT = cast(Result.result, Text).label("result")


def _stream(conn: Connection, query: Select[Any]) -> Rows[*tuple[Any, ...]]:
    return conn.execute(query.execution_options(yield_per=constants.EXPORT_FETCH_ROWS))


def item_query(job_id: str, columns: Sequence[Any], filters: ResultFilter = ALL_ITEMS) -> Select[Any]:
    """``columns`` of the job's items that ``filters`` keep, in input order (not executed): each item with its result
    if it has one (``LEFT JOIN results``) and its job's row (for the state of an item without a result)."""
    query = (
        select(*columns)
        .select_from(Item)
        .join(Job, Job.id == Item.job_id)
        .outerjoin(Result, and_(Result.job_id == Item.job_id, Result.index == Item.index))
        .where(Item.job_id == job_id)
        .order_by(Item.index)
    )
    return filters.apply(query)


# -- results and the text exports --------------------------------------------------------------------------------------


def result_rows(session: Session, job_id: str, filters: ResultFilter, *, with_vectors: bool) -> Rows[*tuple[Any, ...]]:
    """Every column of a `ResultRow`: ``index, client_id, status, result, error_code, error_message, label, score,
    answer, start_char, end_char, entity_count``, and ``vector`` when ``with_vectors``; the result decoded."""
    columns: tuple[Any, ...] = (
        Item.index,
        Item.client_id,
        STORED_STATE,
        Result.result,
        ERROR_CODE,
        ERROR_MESSAGE,
        Result.label,
        Result.score,
        Result.answer,
        Result.start_char,
        Result.end_char,
        Result.entity_count,
    )
    if with_vectors:
        columns += (Result.vector,)
    return _stream(session.connection(), item_query(job_id, columns, filters))


def result_texts(session: Session, job_id: str, filters: ResultFilter) -> Rows[*tuple[Any, ...]]:
    """``index, client_id, status, result, error_code, error_message``, the result as its stored JSON text (the
    database's own ``json`` text on PostgreSQL, the column's text on SQLite; ``None`` for SQL NULL)."""
    columns = (Item.index, Item.client_id, STORED_STATE, _RESULT_TEXT, ERROR_CODE, ERROR_MESSAGE)
    return _stream(session.connection(), item_query(job_id, columns, filters))


def vector_results(session: Session, job_id: str, filters: ResultFilter) -> Rows[*tuple[Any, ...]]:
    """``index, client_id, status, result, vector, error_code, error_message``: the stored description of the
    vectors (decoded) and their bytes."""
    columns = (
        Item.index,
        Item.client_id,
        STORED_STATE,
        Result.result,
        Result.vector,
        ERROR_CODE,
        ERROR_MESSAGE,
    )
    return _stream(session.connection(), item_query(job_id, columns, filters))


def top_column_rows(
    session: Session, job_id: str, filters: ResultFilter, tops: Sequence[str]
) -> Rows[*tuple[Any, ...]]:
    """``index, client_id, status``, the `TOP_COLUMNS` named by ``tops`` (labelled by those names), then
    ``error_code, error_message, result`` (the result as its stored JSON text)."""
    columns = (
        Item.index,
        Item.client_id,
        STORED_STATE,
        *(TOP_COLUMNS[name].label(name) for name in tops),
        ERROR_CODE,
        ERROR_MESSAGE,
        _RESULT_TEXT,
    )
    return _stream(session.connection(), item_query(job_id, columns, filters))


# -- vectors (NPY, Parquet) --------------------------------------------------------------------------------------------


def vector_description(conn: Connection, job_id: str) -> Any:
    """The stored result (``{"dim", "dtype", …}``) of one succeeded item with a vector; ``None`` before any."""
    return conn.execute(
        select(Result.result)
        .where(Result.job_id == job_id, Result.state == ItemState.SUCCEEDED, Result.vector.is_not(None))
        .limit(1)
    ).scalar()


def _rows_file_query(job_id: str, filters: ResultFilter, windows: bool) -> Select[Any]:
    columns: list[Any] = [
        Item.index,
        Item.client_id,
        STORED_STATE,
        func.length(Result.vector).label("vector_bytes"),
        ERROR_CODE,
        ERROR_MESSAGE,
    ]
    if windows:
        columns.append(Result.result)
    return item_query(job_id, columns, filters)


def rows_file_rows(conn: Connection, job_id: str, filters: ResultFilter, *, windows: bool) -> Iterator[Sequence[Any]]:
    """Batches of what an NPY export's rows file says of each item: ``index, client_id, status, vector_bytes,
    error_code, error_message``, and ``result`` with ``windows`` (the stored windows' spans)."""
    return _stream(conn, _rows_file_query(job_id, filters, windows)).partitions()


#: Rows per page of `rows_file_pages`.
_PAGE_ROWS = 20_000


#: Compiling a statement for the driver's own cursor: the literal-execute parameters (`IS_FAILED`'s state) are
#: rendered into the text, which only SQLAlchemy's own execution would otherwise do.
_RAW = {"render_postcompile": True}


def rows_file_pages(conn: Connection, job_id: str, filters: ResultFilter, *, windows: bool) -> Iterator[Sequence[Any]]:
    """PostgreSQL: the rows of `rows_file_rows` a page at a time, each page read whole by the driver (keyset
    pagination on the index): a third of the time that a server-side cursor and the Core's rows take, with as
    little held at once."""
    query = _rows_file_query(job_id, filters, windows)
    raw = conn.connection.driver_connection
    last = -1
    while True:
        compiled = query.where(Item.index > last).limit(_PAGE_ROWS).compile(dialect=conn.dialect, compile_kwargs=_RAW)
        with raw.cursor(binary=True) as cursor:  # type: ignore[union-attr]
            page = cursor.execute(str(compiled), compiled.params).fetchall()
        if page:
            yield page
        if len(page) < _PAGE_ROWS:
            return
        last = page[-1][0]  # the index: the query's first column, the page's order


def vector_query(job_id: str, filters: ResultFilter) -> Select[Any]:
    """(``index``, ``vector``) of the items with vectors that the filters keep, in input order (not executed): the
    results alone, on their primary key (an item without a result has no vector)."""
    query = (
        select(Result.index, Result.vector)
        .where(Result.job_id == job_id, Result.state == ItemState.SUCCEEDED, Result.vector.is_not(None))
        .order_by(Result.index)
    )
    return filters.apply(query, results_only=True)  # type: ignore[arg-type]


def vector_rows(conn: Connection, job_id: str, filters: ResultFilter) -> Iterator[Sequence[Row[*tuple[Any, ...]]]]:
    """Batches of `vector_query`'s rows through the Core."""
    return _stream(conn, vector_query(job_id, filters)).partitions()


@contextmanager
def copy_vectors(conn: Connection, job_id: str, filters: ResultFilter) -> Iterator[Iterator[Any]]:
    """PostgreSQL: `vector_query` as a binary COPY out: its blocks of bytes, as the server sends them."""
    compiled = vector_query(job_id, filters).compile(dialect=conn.dialect, compile_kwargs=_RAW)
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


def job_started_at(session: Session, job_id: str) -> dt.datetime | None:
    """When the job started (as stored: SQLite's naive), if it has."""
    return session.scalar(select(Job.started_at).where(Job.id == job_id))


def chunk_writes(session: Session, job_id: str) -> Sequence[Row[dt.datetime | None, int]]:
    """``finished_at, items`` of each stored write of the job's results (one ``finished_at`` a write), oldest
    first. SQLite may hand ``finished_at`` back as text."""
    return session.execute(
        select(Result.finished_at, func.count().label("items"))
        .where(Result.job_id == job_id, Result.finished_at.is_not(None))
        .group_by(Result.finished_at)
        .order_by(Result.finished_at)
    ).all()


def error_counts(session: Session, job_id: str, limit: int) -> Sequence[Row[str | None, int, str | None]]:
    """``error_code, items, sample_message`` of the job's failed items by code, most frequent first (ties by code),
    at most ``limit`` codes; the sample is the smallest message of the code, so every read shows the same one."""
    count = func.count().label("items")
    return session.execute(
        select(Result.error_code, count, func.min(Result.error_message).label("sample_message"))
        .where(Result.job_id == job_id, IS_FAILED)
        .group_by(Result.error_code)
        .order_by(count.desc(), Result.error_code)
        .limit(limit)
    ).all()


# -- whole items (verification) ----------------------------------------------------------------------------------------


@dataclass
class StoredItem:
    """An item whole: its input row, its result row's columns (``None`` without one, ``attempts`` 0) and its state
    (`inferq.states.item_state_of`)."""

    index: int
    client_id: str | None
    input: Any
    state: ItemState
    result: Any = None
    vector: bytes | None = None
    label: str | None = None
    score: float | None = None
    answer: str | None = None
    start_char: int | None = None
    end_char: int | None = None
    entity_count: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    attempts: int = 0
    finished_at: dt.datetime | None = None
    job_id: str = ""


#: The `Result` columns a `StoredItem` holds besides its state, by name.
_WHOLE = tuple(c for c in Result.__table__.columns if c.name not in ("job_id", "index", "state"))
#: What `items_with_results` reads for them: the error's code and message as every read derives them (`ERROR_CODE`,
#: `ERROR_MESSAGE`: an expired job's unrun item has the deadline's), the rest as stored.
_WHOLE_READ = tuple({"error_code": ERROR_CODE, "error_message": ERROR_MESSAGE}.get(c.name, c) for c in _WHOLE)


def items_with_results(session: Session, *job_ids: str) -> list[StoredItem]:
    """Every item of ``job_ids`` whole, by job then index: for checks that compare each item (the soak's verdict,
    tests), not for a big job's hot path."""
    rows = session.execute(
        select(
            Item.job_id,
            Item.index.label("item_index"),
            Item.client_id,
            Item.input,
            Result.state.label("stored_state"),
            Job.state.label("job_state"),
            *_WHOLE_READ,
        )
        .select_from(Item)
        .join(Job, Job.id == Item.job_id)
        .outerjoin(Result, and_(Result.job_id == Item.job_id, Result.index == Item.index))
        .where(Item.job_id.in_(job_ids))
        .order_by(Item.job_id, Item.index)
    ).mappings()
    return [
        StoredItem(
            job_id=row["job_id"],
            index=row["item_index"],
            client_id=row["client_id"],
            input=row["input"],
            state=item_state_of(row["stored_state"], row["job_state"]),
            **{c.name: row[c.name] for c in _WHOLE if c.name != "attempts"},
            attempts=row["attempts"] or 0,
        )
        for row in rows
    ]
