"""``inferq db``: schema migrations."""

from __future__ import annotations

import click

from inferq.settings import get_settings


@click.group("db")
def db() -> None:
    """Database schema (Alembic migrations)."""


@db.command("upgrade")
@click.argument("revision", default="head")
def upgrade(revision: str) -> None:
    """Apply migrations up to REVISION (default: head)."""
    from inferq import migrate

    migrate.upgrade(get_settings(), revision)
    click.echo(f"database at {migrate.current(get_settings())}", err=True)


@db.command("current")
def current() -> None:
    """Print the applied revision."""
    from inferq import migrate

    click.echo(migrate.current(get_settings()) or "none")
