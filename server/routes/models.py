"""The model registry (``GET /v1/models``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from server.auth import Caller
from server.deps import Made

router = APIRouter(tags=["models"])


@router.get("/models")
def list_models(made: Made, _caller: Caller) -> dict[str, Any]:
    """The registry's models: name, source, task (``null``: any task), queue (``null``: the default queue),
    precision, revision, max_batch_tokens, description: each entry as the registry (``INFERQ_MODELS``) holds it, so
    that ``inferq models`` prints the same over HTTP as on the server's machine."""
    return {
        "object": "list",
        "data": [{"name": name, **spec.model_dump(mode="json")} for name, spec in sorted(made.settings.models.items())],
    }
