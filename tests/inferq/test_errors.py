from __future__ import annotations

import inspect
import pickle
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError

import inferq.errors as errors
from inferq.db import make_engine
from inferq.settings import Settings


def all_errors() -> list[type[errors.InferqError]]:
    return [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, errors.InferqError)]


def test_one_rooted_tree_with_unique_stable_codes() -> None:
    classes = all_errors()
    codes = [c.code for c in classes]
    assert len(codes) == len(set(codes)), "every error has a code of its own"
    assert all(issubclass(c, errors.InferqError) for c in classes)


def test_the_module_docstring_draws_every_error() -> None:
    doc = errors.__doc__ or ""
    for cls in all_errors():
        assert cls.__name__ in doc, f"{cls.__name__} missing from the tree in errors.py"


def test_an_unreachable_database_raises_database_unavailable_without_the_url(tmp_path: Path) -> None:
    # Given an engine on a database file that cannot be opened (its directory does not exist)
    engine = make_engine(Settings(database_url=f"sqlite:///{tmp_path}/missing/s3cret.db"))
    # When a statement runs
    with pytest.raises(errors.DatabaseUnavailable) as caught, engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    # Then it is inferq's transient error, raised from the driver's, its message the driver's first line
    err = caught.value
    assert isinstance(err, errors.TransientError) and err.code == "database_unavailable"
    assert err.message == f"database unreachable: {err.reason}" and err.kind == "OperationalError"
    assert "s3cret" not in err.message
    assert isinstance(err.__cause__, sqlite3.OperationalError)


def test_a_statement_sqlite_cannot_run_stays_sqlalchemys_error_not_an_outage(tmp_path: Path) -> None:
    # Given an engine on a SQLite database that opens
    engine = make_engine(Settings(database_url=f"sqlite:///{tmp_path}/ok.db"))
    # When a statement names a table that is not there (the driver raises OperationalError, as for a busy file)
    with pytest.raises(OperationalError) as caught, engine.connect() as conn:
        conn.execute(text("SELECT * FROM no_such_table"))
    # Then it is not taken for an unreachable database (which callers retry): it stays SQLAlchemy's error
    assert not isinstance(caught.value, errors.DatabaseUnavailable)
    assert "no such table" in str(caught.value)


def test_a_broken_constraint_stays_sqlalchemys_error(tmp_path: Path) -> None:
    engine = make_engine(Settings(database_url=f"sqlite:///{tmp_path}/ok.db"))
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER PRIMARY KEY)"))
        conn.execute(text("INSERT INTO t VALUES (1), (1)"))


def test_database_unavailable_survives_a_pickle_as_a_celery_retry_carries_it() -> None:
    err = errors.DatabaseUnavailable("database unreachable: gone", reason="gone", kind="OperationalError")
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.message, copy.reason, copy.kind, copy.code) == (err.message, "gone", "OperationalError", err.code)


@pytest.mark.services
def test_a_deadlock_is_retried_as_transient_and_named_as_such(own_postgres: str) -> None:
    # Given two transactions (on a database of this test's own) that each hold a row lock the other one wants
    engine = make_engine(Settings(database_url=own_postgres))
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE deadlock_t (x INTEGER PRIMARY KEY)"))
        conn.execute(text("INSERT INTO deadlock_t VALUES (1), (2)"))
    first, second = engine.connect(), engine.connect()
    first.begin(), second.begin()
    first.execute(text("UPDATE deadlock_t SET x = x WHERE x = 1"))
    second.execute(text("UPDATE deadlock_t SET x = x WHERE x = 2"))
    caught: list[BaseException] = []

    def cross(conn: Any, row: int) -> None:
        try:
            conn.execute(text("UPDATE deadlock_t SET x = x WHERE x = :r"), {"r": row})
        except BaseException as exc:
            caught.append(exc)
        finally:
            conn.rollback()

    # When each then asks for the other's row: the server detects the deadlock and rolls one of them back
    threads = [threading.Thread(target=cross, args=(first, 2)), threading.Thread(target=cross, args=(second, 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    first.close(), second.close()
    engine.dispose()

    # Then the victim gets inferq's transient error (retried with backoff like any), which says it was rolled back,
    # not that the database is unreachable
    assert len(caught) == 1
    err = caught[0]
    assert isinstance(err, errors.DatabaseUnavailable) and err.code == "database_unavailable"
    assert err.message.startswith("database transaction rolled back: deadlock detected"), err.message
