"""Engine and session factories. The caller owns the session: functions take a `Session`; commands and task
bodies open ``with sessions.begin():``.

The boundary for the database's failures: on every engine made here, an error that means the database is
unreachable or dropped the connection (`is_transient_db_error`) is raised as `DatabaseUnavailable`, from the
driver's error, whichever statement, commit or connection attempt met it. Callers catch that one error (and
retry with `inferq.errors.backoff`); any other database error (a bad statement, a constraint) stays SQLAlchemy's."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from inferq.errors import DatabaseUnavailable
from inferq.settings import Settings


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def make_engine(settings: Settings, *, pool_size: int = 5, pre_ping: bool = True, **kwargs: Any) -> Engine:
    """An engine on ``settings.database_url``; ``kwargs`` go to `create_engine`. On PostgreSQL it keeps
    ``pool_size`` connections and opens as many more at a peak (5 suits a worker or a CLI process), and tests each
    connection it hands out with a round trip (``pre_ping``) unless told not to: a caller that retries a statement
    once after a dropped connection (the pool then opens fresh ones) can skip that round trip."""
    url = settings.database_url
    if is_sqlite(url):
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False}, **kwargs)
        _serialise_sqlite_writers(engine)
    else:
        engine = create_engine(url, pool_pre_ping=pre_ping, pool_size=pool_size, max_overflow=pool_size, **kwargs)
    event.listen(engine, "handle_error", _raise_unavailable)
    return engine


#: What SQLite says when its file is busy, cannot be opened or read: of its driver's ``OperationalError``, the only
#: ones that trying again may mend. It raises the same class for a statement it cannot run ("no such table",
#: "Expression tree is too large"), which retrying would only repeat.
_SQLITE_TRANSIENT = ("database is locked", "database table is locked", "unable to open", "disk i/o error")


def is_transient_db_error(exc: BaseException) -> bool:
    """The database is unreachable or dropped the connection (retry), as opposed to a bad statement (don't)."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if not isinstance(exc, OperationalError):
        return False
    orig = exc.orig
    if type(orig).__module__ == "sqlite3":
        said = str(orig).lower()
        return any(reason in said for reason in _SQLITE_TRANSIENT)
    return True


#: SQLSTATE class of a transaction the server rolled back (a deadlock, a serialization failure): the database is
#: there, and the transaction is retried like any transient failure, under a message that says what happened.
_ROLLED_BACK_CLASS = "40"


def database_unavailable(exc: DBAPIError) -> DatabaseUnavailable:
    """``exc`` as inferq's error: the driver's first line as the reason, never the statement or the URL."""
    kind = type(exc.orig if exc.orig is not None else exc).__name__
    lines = str(exc.orig).splitlines() if exc.orig is not None else []
    reason = lines[0] if lines else kind
    sqlstate = getattr(exc.orig, "sqlstate", None) or ""
    what = "transaction rolled back" if sqlstate.startswith(_ROLLED_BACK_CLASS) else "unreachable"
    return DatabaseUnavailable(f"database {what}: {reason}", reason=reason, kind=kind)


def _raise_unavailable(context: ExceptionContext) -> None:
    # SQLAlchemy's hook for every error met by a statement, a commit or a connection attempt: raising here
    # replaces its exception (chained from the driver's) after its own cleanup, the connection invalidated as
    # usual. Pool pre-pings are left alone: SQLAlchemy handles a stale pooled connection itself, by reconnecting.
    exc = context.sqlalchemy_exception
    if context.is_pre_ping or not isinstance(exc, DBAPIError) or not is_transient_db_error(exc):
        return
    raise database_unavailable(exc)


def _serialise_sqlite_writers(engine: Engine) -> None:
    # SQLite allows one writer. A deferred transaction that reads and then writes can fail at once with
    # SQLITE_BUSY when another writer got in between; BEGIN IMMEDIATE takes the write lock up front and waits
    # (busy timeout) instead. This is SQLAlchemy's documented recipe for pysqlite.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        read_only = conn.get_execution_options().get(READ_ONLY)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


#: Execution option marking a read-only connection: on SQLite its transactions do not take the write lock.
READ_ONLY = "inferq_read_only"


def make_sessionmaker(engine: Engine, *, read_only: bool = False) -> sessionmaker[Session]:
    """Sessions for writing, or (``read_only``) for reading: on SQLite those never block writers."""
    bind = engine.execution_options(**{READ_ONLY: True}) if read_only else engine
    return sessionmaker(bind, expire_on_commit=False)
