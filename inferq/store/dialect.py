"""The one seam between PostgreSQL's fast paths (COPY, `jsonb`, `FOR UPDATE`, `ON CONFLICT`, planner settings) and
the SQLite fallback: `dialect_of` says which database a session, connection or engine speaks, decided once per
engine, and a store function that has two paths branches on it in one place."""

from __future__ import annotations

from enum import Enum
from functools import cache

from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session


class Dialect(str, Enum):
    #: Production: COPY in and out, `jsonb` result writes, row locks.
    POSTGRESQL = "postgresql"
    #: The embedded default: one writer at a time (`inferq.db` serialises them), plain INSERT/UPDATE paths.
    SQLITE = "sqlite"


@cache
def _of_engine(engine: Engine) -> Dialect:
    return Dialect(engine.dialect.name)


def dialect_of(bind: Session | Connection | Engine) -> Dialect:
    """The dialect of ``bind``'s engine (a `Session`'s bind, a `Connection`'s engine, or the engine itself)."""
    if isinstance(bind, Session):
        found = bind.get_bind()
        engine = found.engine if isinstance(found, Connection) else found
    elif isinstance(bind, Connection):
        engine = bind.engine
    else:
        engine = bind
    return _of_engine(engine)
