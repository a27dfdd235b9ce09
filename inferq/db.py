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
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
