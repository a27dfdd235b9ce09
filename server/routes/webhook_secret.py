"""The signing secret of the caller's tenant's webhooks: ``GET /v1/webhook-secret`` reads it,
``POST /v1/webhook-secret/rotate`` replaces it (the previous one signs beside the new one for an overlap period, as
Standard Webhooks describes; `inferq.store.secrets`). A key acts on its own tenant's secret only, admin keys
included: no route takes a tenant's name. Answers are never cached (``Cache-Control: no-store``), and the secret is
never logged (`inferq.logs` redacts ``whsec_…`` wherever it appears)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from inferq.store.secrets import WebhookSecret, read_webhook_secret, rotate_webhook_secret
from server.auth import Caller
from server.deps import Made

router = APIRouter(tags=["webhooks"])

#: Longest overlap a rotation may ask for: 30 days (a receiver that has not switched by then never will).
MAX_OVERLAP_SECONDS = 30 * 24 * 3600


def secret_json(found: WebhookSecret) -> dict[str, Any]:
    expires = found.previous_expires_at
    return {
        "object": "webhook_secret",
        "tenant": found.tenant,
        "secret": found.secret,
        "previous_expires_at": expires.isoformat() if expires is not None else None,
    }


@router.get("/webhook-secret")
def get_webhook_secret(made: Made, caller: Caller, response: Response) -> dict[str, Any]:
    """The secret that signs the caller's tenant's webhooks (``whsec_…``), and until when the secret a rotation
    replaced still signs too (``previous_expires_at``; ``null`` when no overlap is running)."""
    response.headers["Cache-Control"] = "no-store"
    with made.client.sessions.begin() as session:
        return secret_json(read_webhook_secret(session, caller.tenant))


@router.post("/webhook-secret/rotate")
def rotate(
    made: Made,
    caller: Caller,
    response: Response,
    overlap_seconds: Annotated[
        float | None,
        Query(ge=0, le=MAX_OVERLAP_SECONDS, description="Seconds the old secret keeps signing (default: the server's)"),
    ] = None,
) -> dict[str, Any]:
    """Give the caller's tenant a fresh signing secret (answered once here; readable again with
    ``GET /v1/webhook-secret``). Until ``previous_expires_at`` every webhook carries two ``v1,`` signatures, one
    by each secret; after it, only the new secret's."""
    response.headers["Cache-Control"] = "no-store"
    overlap = made.settings.webhook_secret_overlap if overlap_seconds is None else overlap_seconds
    with made.client.sessions.begin() as session:
        return secret_json(rotate_webhook_secret(session, caller.tenant, overlap))
