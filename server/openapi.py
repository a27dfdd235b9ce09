"""The HTTP API's OpenAPI document, as JSON on standard output: ``python -m server.openapi > docs/openapi.json``
writes the snapshot that tests/server/test_openapi.py holds the API to (and the docs site renders)."""

from __future__ import annotations

import json
import sys
from typing import Any

from inferq.settings import Settings


def openapi_document() -> dict[str, Any]:
    """The document of the app as `server.app.create_app` makes it (no database or broker is reached)."""
    from server.app import create_app

    return create_app(Settings()).openapi()


def render(document: dict[str, Any]) -> str:
    """The snapshot's text: indented, keys in the document's order, non-ASCII characters as they are."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    sys.stdout.write(render(openapi_document()))


if __name__ == "__main__":
    main()
