"""Every SQL statement lives in `inferq.store`: the packages around it (the core, the producer, the worker, the
server, the demo) build no query and send none. A walk of their source with `ast` names each file:line that does.

What counts as SQL: importing a query construct from SQLAlchemy (``select``, ``update``, ``text``, ``func``, …) or
anything from its dialects, importing a PostgreSQL driver (psycopg), and calling ``.execute(``, ``.scalar(``,
``.scalars(``, ``.exec_driver_sql(`` (with the statement: a Redis pipeline's ``execute()`` takes none),
``.with_for_update(`` or a cursor's ``.copy(``.

Allowed outside the store, and why:
- ``inferq/store/``: the store itself.
- ``inferq/db.py``: the engine and session factories. Its connect hook sets SQLite's pragmas on each new DBAPI
  connection (``cursor.execute("PRAGMA …")``): connection setup that every session needs before any statement, not a
  statement on the data.
- ``inferq/migrate.py`` (and ``migrations/``, not walked): schema migrations speak DDL through Alembic, which is
  their whole purpose.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: The packages walked.
PACKAGES = ("inferq", "producer", "worker", "server", "inferq_demo")
#: Paths (relative to the repository, with ``/``) allowed to speak SQL, as the module's docstring says why.
ALLOWED_PREFIXES = ("inferq/store/",)
ALLOWED_FILES = frozenset({"inferq/db.py", "inferq/migrate.py"})

#: SQLAlchemy names that build statements or parts of them.
QUERY_CONSTRUCTS = frozenset(
    {
        "select",
        "insert",
        "update",
        "delete",
        "text",
        "func",
        "bindparam",
        "or_",
        "and_",
        "not_",
        "literal",
        "literal_column",
        "union",
        "union_all",
        "intersect",
        "except_",
        "exists",
        "case",
        "tuple_",
        "cast",
        "type_coerce",
        "column",
        "table",
        "values",
        "lateral",
        "outerjoin",
        "join",
        "true",
        "false",
        "null",
        "distinct",
        "desc",
        "asc",
        "over",
        "extract",
        "between",
        "any_",
        "all_",
    }
)
#: SQLAlchemy modules whose every name is a query construct (or a dialect's).
QUERY_MODULES = ("sqlalchemy.sql", "sqlalchemy.dialects", "sqlalchemy.sql.expression")
#: Methods that send a statement (on a session, a connection or a DBAPI cursor): always given the statement. Called
#: without any argument, ``execute()`` is something else: a Redis pipeline's (`inferq.brokers.redis`).
SENDS_A_STATEMENT = frozenset({"execute", "scalar", "scalars", "exec_driver_sql"})
DRIVERS = ("psycopg", "psycopg2", "psycopg_pool", "asyncpg")


def _module_in(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _receiver_name(node: ast.expr) -> str:
    """The last name of a call's receiver: ``cursor`` for ``cursor.copy(…)``, ``raw`` for ``self.raw.copy(…)``."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Call):
        return _receiver_name(node.func)
    return ""


def sql_uses(source: str) -> list[tuple[int, str]]:
    """(line, what) of each use of SQL in ``source``, as the module's docstring defines it."""
    found: list[tuple[int, str]] = []
    sqlalchemy_aliases: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _module_in(alias.name, DRIVERS):
                    found.append((node.lineno, f"imports the driver {alias.name}"))
                elif _module_in(alias.name, QUERY_MODULES):
                    found.append((node.lineno, f"imports {alias.name}"))
                elif alias.name == "sqlalchemy":
                    sqlalchemy_aliases.add(alias.asname or alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            if _module_in(node.module, DRIVERS):
                found.append((node.lineno, f"imports from the driver {node.module}"))
            elif _module_in(node.module, QUERY_MODULES):
                found.append((node.lineno, f"imports from {node.module}"))
            elif node.module == "sqlalchemy":
                for alias in node.names:
                    if alias.name in QUERY_CONSTRUCTS:
                        found.append((node.lineno, f"imports sqlalchemy.{alias.name}"))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            method = node.func.attr
            if method in SENDS_A_STATEMENT and (node.args or node.keywords):
                found.append((node.lineno, f"calls .{method}("))
            elif method == "with_for_update":
                found.append((node.lineno, "calls .with_for_update("))
            elif method == "copy" and "cursor" in _receiver_name(node.func.value).lower():
                found.append((node.lineno, "calls cursor.copy("))
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in sqlalchemy_aliases
            and node.attr in QUERY_CONSTRUCTS
        ):
            found.append((node.lineno, f"uses sqlalchemy.{node.attr}"))
    return sorted(found)


def walked_files() -> list[Path]:
    files = [path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))]
    return [path for path in files if "__pycache__" not in path.parts]


def _allowed(relative: str) -> bool:
    return relative in ALLOWED_FILES or relative.startswith(ALLOWED_PREFIXES)


def test_no_sql_outside_the_store() -> None:
    # Given every module of the packages around the store
    offences = []
    for path in walked_files():
        relative = path.relative_to(ROOT).as_posix()
        if _allowed(relative):
            continue
        # When its source is walked, then it neither imports query constructs or drivers nor sends statements
        offences += [f"{relative}:{line}: {what}" for line, what in sql_uses(path.read_text(encoding="utf-8"))]
    assert not offences, "SQL outside inferq/store/:\n" + "\n".join(offences)


def test_the_walk_covers_the_packages_and_leaves_out_only_the_allowed_files() -> None:
    walked = {path.relative_to(ROOT).as_posix() for path in walked_files()}
    assert {"producer/client.py", "server/routes/jobs.py", "worker/runner.py", "inferq/keys.py"} <= walked
    assert {"inferq/store/jobs.py", "inferq/db.py"} <= {r for r in walked if _allowed(r)}
    assert not _allowed("inferq/schema.py") and not _allowed("producer/export.py")


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ("from sqlalchemy import select, Engine\n", [(1, "imports sqlalchemy.select")]),
        ("from sqlalchemy import Engine, Connection\nfrom sqlalchemy.orm import Session\n", []),
        ("from sqlalchemy.dialects.postgresql import insert\n", [(1, "imports from sqlalchemy.dialects.postgresql")]),
        ("import sqlalchemy.dialects.sqlite\n", [(1, "imports sqlalchemy.dialects.sqlite")]),
        ("import sqlalchemy as sa\nq = sa.select(1)\n", [(2, "uses sqlalchemy.select")]),
        ("def f():\n    import psycopg\n", [(2, "imports the driver psycopg")]),
        ("from psycopg import sql\n", [(1, "imports from the driver psycopg")]),
        (
            "session.execute(q)\nconn.exec_driver_sql('SELECT 1')\n",
            [(1, "calls .execute("), (2, "calls .exec_driver_sql(")],
        ),
        ("n = s.scalar(q)\nrows = s.scalars(q)\n", [(1, "calls .scalar("), (2, "calls .scalars(")]),
        ("q = query.with_for_update()\n", [(1, "calls .with_for_update(")]),
        (
            "with raw.cursor() as cursor, cursor.copy('COPY t FROM STDIN') as c:\n    pass\n",
            [(1, "calls cursor.copy(")],
        ),
        ("with raw.cursor().copy('COPY t TO STDOUT') as c:\n    pass\n", [(1, "calls cursor.copy(")]),
        ("rows = matrix.copy()\nd = dict(a=1).get('a')\n", []),
        ("with client.pipeline() as pipe:\n    pipe.lrange('q', 0, -1)\n    found = pipe.execute()\n", []),
        ("conn.execute(statement=q)\n", [(1, "calls .execute(")]),
    ],
)
def test_the_walk_finds_sql_in_a_snippet(snippet: str, expected: list[tuple[int, str]]) -> None:
    assert sql_uses(snippet) == expected
