"""Refusing, at the edge, request values that nothing behind it can hold: ``400 malformed_value`` for a NUL
character or a lone surrogate in a request's path or in a query parameter's name or value.

PostgreSQL's text refuses NUL, and no UTF-8 encoder takes a lone surrogate: such a value reaching a query (a job id in
the path, ``?after=``, ``?model=``, ``?metadata[key]=``) would fail in the driver, as a 500. One check here, before
any route runs, answers every route alike; values inside a body (an upload's lines, a multipart body's fields, the
JSON of ``params`` and ``metadata``) are checked where they are decoded (`producer.inputs`,
`server.routes.jobs.parse_options`).
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from inferq.errors import MalformedValue
from inferq.task_specs import unstorable
from server.errors import error_body, printable


def malformed(scope: Scope) -> tuple[str, str] | None:
    """The first unstorable value of a request's path and query, as (where, why); None when all are fine. The query
    is decoded as Starlette decodes it (UTF-8, undecodable bytes replaced), so the values checked are the values a
    route receives."""
    problem = unstorable(str(scope.get("path", "")))
    if problem is not None:
        return "path", problem
    query = scope.get("query_string", b"").decode("latin-1")
    for name, value in parse_qsl(query, keep_blank_values=True):
        problem = unstorable(name)
        if problem is not None:
            return "query", f"a parameter name {problem}"
        problem = unstorable(value)
        if problem is not None:
            return name, problem
    return None


class RefuseMalformed:
    """ASGI middleware: answers ``400 malformed_value`` (naming the path or the query parameter) to a request whose
    path or query holds a value `inferq.task_specs.unstorable` refuses; passes every other request on untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            found = malformed(scope)
            if found is not None:
                where, problem = found
                field = printable(where)
                body = error_body(MalformedValue.code, f"{field}: {problem}", field=field)
                await JSONResponse(body, status_code=400)(scope, receive, send)
                return
        await self.app(scope, receive, send)
