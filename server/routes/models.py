"""The model registry (``GET /v1/models``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from server.auth import Caller
from server.deps import Made

router = APIRouter(tags=["models"])


@router.get("/models")
def list_models(made: Made, _caller: Caller) -> dict[str, Any]:
    """The registry's models: name, source, task (``null``: any task), queue, precision, description."""
    settings = made.settings
    return {
        "object": "list",
        "data": [
            {
                "name": name,
                "source": spec.source,
                "task": spec.task.value if spec.task else None,
                "queue": settings.queue_of(spec),
                "precision": spec.precision,
                "description": spec.description,
            }
            for name, spec in sorted(settings.models.items())
        ],
    }
