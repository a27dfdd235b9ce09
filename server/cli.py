"""The server's commands: ``inferq serve`` (the HTTP API on uvicorn) and ``inferq keys`` (API keys and tenants).

``keys`` needs only the database: it imports neither FastAPI nor uvicorn."""

from __future__ import annotations

import json
import shutil
from typing import Any

import click

from inferq.settings import get_settings


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every one).")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1), help="Server processes.")
@click.option("--log-level", default=None, help="uvicorn's log level (default: INFERQ_LOG_LEVEL).")
def serve(host: str, port: int, workers: int, log_level: str | None) -> None:
    """Run the HTTP API (FastAPI on uvicorn); OpenAPI at /docs."""
    import uvicorn

    from inferq import logs

    settings = get_settings()
    level = (log_level or settings.log_level).upper()
    # inferq's own logging (text or INFERQ_LOG_FORMAT=json, secrets redacted) for uvicorn's lines too; the access
    # lines are the app's own (`server.metrics`: route template, status, duration), so uvicorn's are off.
    logs.configure(settings.log_format, level)
    common: dict[str, Any] = {"host": host, "port": port, "log_config": None, "access_log": False}
    if workers > 1:
        if settings.api_metrics:
            # Every server process writes its counts to files in one fresh directory; a scrape of any of them adds
            # up all (prometheus-client's multiprocess mode). The processes inherit the variable.
            from inferq.metrics import prepare_multiprocess

            path = prepare_multiprocess()
        try:
            # Each uvicorn worker process imports the factory and builds its own app from the environment.
            uvicorn.run("server.app:app_from_environment", factory=True, workers=workers, **common)
        finally:
            if settings.api_metrics:
                shutil.rmtree(path, ignore_errors=True)
        return
    from server.app import create_app

    uvicorn.run(create_app(settings), **common)


@click.group()
def keys() -> None:
    """API keys of the HTTP API: create (shown once), list, revoke; a tenant's share of the workers."""


@keys.command("create")
@click.option("--tenant", required=True, help="The tenant the key acts for (made on its first key).")
@click.option("--admin", is_flag=True, help="An admin key: sees and acts on every tenant's jobs.")
@click.option(
    "--max-queued-items",
    type=click.IntRange(min=0),
    default=None,
    help="Set the tenant's quota on unfinished items (429 past it).",
)
def create_key_command(tenant: str, admin: bool, max_queued_items: int | None) -> None:
    """Create a key and print it: it is shown this once, only its hash is stored. A new tenant's webhook signing
    secret is shown too, this once, on stderr (its keys read it again at ``GET /v1/webhook-secret``)."""
    from inferq.db import make_engine, make_sessionmaker
    from inferq.keys import create_key
    from inferq.store.secrets import read_webhook_secret, tenant_exists

    engine = make_engine(get_settings())
    try:
        with make_sessionmaker(engine).begin() as session:
            new_tenant = not tenant_exists(session, tenant)
            key, info = create_key(session, tenant, admin=admin, max_queued_items=max_queued_items)
            secret = read_webhook_secret(session, tenant).secret if new_tenant else None
    finally:
        engine.dispose()
    click.echo(f"key {info.id} for tenant {info.tenant}{' (admin)' if admin else ''}; it is shown this once:", err=True)
    click.echo(key)
    if secret is not None:
        # On the terminal, beside the message: stdout stays the key alone (``KEY=$(inferq keys create …)``).
        click.echo(f"tenant {info.tenant} is new; its webhook signing secret (shown this once): {secret}", err=True)


@keys.command("rotate-webhook-secret")
@click.option("--tenant", required=True, help="The tenant whose webhook signing secret is replaced.")
@click.option(
    "--overlap",
    type=click.FloatRange(min=0),
    default=None,
    help="Seconds the old secret keeps signing beside the new one (default: INFERQ_WEBHOOK_SECRET_OVERLAP).",
)
def rotate_webhook_secret_command(tenant: str, overlap: float | None) -> None:
    """Give a tenant a fresh webhook signing secret and print it; both secrets sign during the overlap."""
    from inferq.db import make_engine, make_sessionmaker
    from inferq.errors import InvalidParameter
    from inferq.store.secrets import rotate_webhook_secret, tenant_exists

    settings = get_settings()
    engine = make_engine(settings)
    try:
        with make_sessionmaker(engine).begin() as session:
            if not tenant_exists(session, tenant):
                raise InvalidParameter(f"no tenant {tenant!r}", field="tenant")
            rotated = rotate_webhook_secret(
                session, tenant, settings.webhook_secret_overlap if overlap is None else overlap
            )
    finally:
        engine.dispose()
    until = rotated.previous_expires_at
    when = f"the old one signs too until {until.isoformat()}" if until else "the old one no longer signs"
    click.echo(f"tenant {tenant}'s new webhook signing secret ({when}):", err=True)
    click.echo(rotated.secret)


@keys.command("list")
@click.option("--tenant", default=None, help="Only this tenant's keys.")
@click.option("--json", "as_json", is_flag=True)
def list_keys_command(tenant: str | None, as_json: bool) -> None:
    """Every key: id, tenant, admin, created, revoked (never the key)."""
    from inferq.db import make_engine, make_sessionmaker
    from inferq.keys import list_keys

    engine = make_engine(get_settings())
    try:
        with make_sessionmaker(engine, read_only=True)() as session:
            found = list_keys(session, tenant)
    finally:
        engine.dispose()
    for k in found:
        created = k.created_at.isoformat()
        revoked = k.revoked_at.isoformat() if k.revoked_at else None
        if as_json:
            from inferq.api import ApiKey

            row = ApiKey(id=k.id, tenant=k.tenant, admin=k.admin, created_at=k.created_at, revoked_at=k.revoked_at)
            click.echo(json.dumps(row.model_dump(mode="json")))
        else:
            click.echo(f"{k.id}  {k.tenant:<24}  {'admin' if k.admin else '-':<5}  {created}  {revoked or '-'}")


@keys.command("revoke")
@click.argument("key_id")
def revoke_key_command(key_id: str) -> None:
    """Revoke a key: refused from the next request on."""
    from inferq.db import make_engine, make_sessionmaker
    from inferq.errors import InvalidParameter
    from inferq.keys import revoke_key

    engine = make_engine(get_settings())
    try:
        with make_sessionmaker(engine).begin() as session:
            if not revoke_key(session, key_id):
                raise InvalidParameter(f"no key {key_id!r}", field="key_id")
    finally:
        engine.dispose()
    click.echo(f"key {key_id} revoked", err=True)


@keys.command("tenant")
@click.argument("name")
@click.option("--weight", type=click.IntRange(min=1), default=None, help="Its share of the workers against others.")
@click.option(
    "--max-chunks-in-flight",
    type=click.IntRange(min=1),
    default=None,
    help="Most of its chunks on the broker or running at once.",
)
@click.option("--no-cap", is_flag=True, help="Remove its cap on chunks in flight.")
@click.option("--json", "as_json", is_flag=True)
def tenant_command(
    name: str, weight: int | None, max_chunks_in_flight: int | None, no_cap: bool, as_json: bool
) -> None:
    """Show a tenant's share of the workers, setting what is given first (the tenant is made if new): its weight
    in the fair share between tenants and its cap on chunks in flight (docs: Fair share)."""
    from inferq.db import make_engine, make_sessionmaker
    from inferq.errors import InvalidParameter
    from inferq.keys import check_tenant_name
    from inferq.tenants import set_share

    if no_cap and max_chunks_in_flight is not None:
        raise InvalidParameter("--no-cap and --max-chunks-in-flight contradict each other", field="no_cap")
    check_tenant_name(name)
    engine = make_engine(get_settings())
    try:
        with make_sessionmaker(engine).begin() as session:
            row = set_share(session, name, weight=weight, max_chunks_in_flight=max_chunks_in_flight, uncapped=no_cap)
            shown = {
                "tenant": row.name,
                "weight": row.weight,
                "max_chunks_in_flight": row.max_chunks_in_flight,
                "max_queued_items": row.max_queued_items,
            }
    finally:
        engine.dispose()
    if as_json:
        click.echo(json.dumps(shown))
    else:
        cap = shown["max_chunks_in_flight"]
        quota = shown["max_queued_items"]
        click.echo(
            f"tenant {name}: weight {shown['weight']}, chunks in flight {cap if cap is not None else 'uncapped'}, "
            f"queued items {quota if quota is not None else 'unlimited'}"
        )
