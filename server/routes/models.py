"""The model registry (``GET /v1/models``)."""

from __future__ import annotations

from fastapi import APIRouter

from inferq import api
from server.auth import Caller
from server.deps import Made
from server.errors import error_responses

router = APIRouter(tags=["models"], responses=error_responses(401, 422, 500, 503))


@router.get("/models", response_model=api.ModelList)
def list_models(made: Made, _caller: Caller) -> api.ModelList:
    """The registry's models: name, source, task (``null``: any task), queue (``null``: the default queue),
    precision, revision, max_batch_tokens, description: each entry as the registry (``INFERQ_MODELS``) holds it, so
    that ``inferq models`` prints the same over HTTP as on the server's machine."""
    return api.ModelList(
        data=[api.ModelInfo(name=name, **spec.model_dump()) for name, spec in sorted(made.settings.models.items())]
    )
