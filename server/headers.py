"""Security headers on every answer of the HTTP API: the second line of defence behind the pages' escaping (they
write every value with ``textContent``) and the API's JSON-only answers.

- ``Content-Security-Policy``: the job pages load scripts, styles, images and API calls from their own origin only
  (`PAGE_POLICY`: no inline script or style, no plugin, no ``<base>``, no framing); every other answer (JSON, files,
  errors) may load nothing at all (`DEFAULT_POLICY`). FastAPI's own documentation pages (``/docs``, ``/redoc``)
  load Swagger UI and ReDoc from their CDN with an inline bootstrap script: they get `DOCS_POLICY`, which allows
  exactly that and still no framing.
- ``X-Frame-Options: DENY`` (and ``frame-ancestors 'none'``): no page of this origin inside another's frame
  (clickjacking of *Cancel job*).
- ``X-Content-Type-Options: nosniff``: a browser takes an answer for its declared type (an exported CSV is never run
  as a script).
- ``Referrer-Policy: no-referrer``: a job's URL, which names its id, goes nowhere else.

A header a route set itself is kept (a page may ask for a stricter one)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: The job pages (``/``, ``/jobs/{id}``) and their static files: everything from this origin, nothing inline.
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
#: Every other answer (the JSON API, exports, errors): nothing to load, nothing to frame it.
DEFAULT_POLICY = "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
#: FastAPI's ``/docs`` and ``/redoc``: their CDN's script and styles and an inline bootstrap, no framing.
DOCS_POLICY = (
    "default-src 'none'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
    "font-src https://fonts.gstatic.com; img-src 'self' data: https://fastapi.tiangolo.com https://cdn.redoc.ly; "
    "connect-src 'self'; worker-src blob:; base-uri 'none'; frame-ancestors 'none'"
)

#: Paths of FastAPI's documentation pages (the OpenAPI document itself is JSON and takes the default).
DOCS_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc")

#: Set on every answer.
COMMON = {
    b"x-frame-options": b"DENY",
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"no-referrer",
}


def policy_for(path: str) -> str:
    """The Content-Security-Policy of an answer to ``path``."""
    if path in DOCS_PATHS:
        return DOCS_POLICY
    if path == "/" or path.startswith(("/jobs/", "/static/")):
        return PAGE_POLICY
    return DEFAULT_POLICY


class SecurityHeaders:
    """ASGI middleware: adds the headers above to every HTTP answer that lacks them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        wanted = {**COMMON, b"content-security-policy": policy_for(scope["path"]).encode("latin-1")}

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in wanted.items() if name not in present]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
