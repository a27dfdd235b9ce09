"""Engine and session factories. The caller owns the session: functions take a `Session`; commands and task
bodies open ``with sessions.begin():``."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from inferq.settings import Settings


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def make_engine(settings: Settings, **kwargs: Any) -> Engine:
    url = settings.database_url
    if is_sqlite(url):
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False}, **kwargs)
        _serialise_sqlite_writers(engine)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5, **kwargs)


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
