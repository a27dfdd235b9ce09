"""The OpenAPI document is the API's contract: its snapshot (docs/openapi.json) must match what the app declares,
so that a change of the API shows in review, and every response in it has a schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from server.openapi import openapi_document, render

SNAPSHOT = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
REGENERATE = "python -m server.openapi > docs/openapi.json"


def test_the_snapshot_is_the_apps_document() -> None:
    document = openapi_document()
    snapshot = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
    assert document == snapshot, f"the API changed without its snapshot: run `{REGENERATE}` and commit it"
    # Written as the command writes it, so that regenerating it changes no byte of an unchanged API
    assert SNAPSHOT.read_text(encoding="utf-8") == render(document), f"regenerate it: `{REGENERATE}`"


def test_every_response_has_a_schema() -> None:
    document = openapi_document()
    missing: list[str] = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                content: dict[str, Any] = response.get("content") or {}
                if not content or any(not media.get("schema") for media in content.values()):
                    missing.append(f"{method.upper()} {path} {status}")
    assert not missing, missing


def test_the_job_and_the_error_body_are_named_schemas() -> None:
    document = openapi_document()
    schemas = document["components"]["schemas"]
    assert {"Job", "JobCreated", "JobList", "ModelList", "WebhookDeliveryList", "ErrorBody"} <= schemas.keys()
    job = document["paths"]["/v1/jobs/{job_id}"]["get"]["responses"]
    assert job["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Job"}
    assert job["404"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
    # FastAPI's own validation error body is not what the API answers (its errors all share one body)
    assert "HTTPValidationError" not in schemas
