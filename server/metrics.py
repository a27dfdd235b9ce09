"""The HTTP API's Prometheus metrics, served at ``/metrics`` (no key: like ``/healthz``, it names no tenant, job or
key; ``INFERQ_API_METRICS=false`` turns it off) and the API's access log lines.

- ``inferq_api_requests_total{route,method,status}``: requests by route *template* (``/v1/jobs/{job_id}``, never a
  raw path with an id; a path no route matches is ``<unmatched>``), method and status code;
- ``inferq_api_request_seconds{route,method}``: a latency histogram (from the request's start to the response's
  last byte, so a streamed download counts its whole stream);
- ``inferq_api_upload_bytes_total{route}``: request body bytes received (the files submitted to ``POST /v1/jobs``);
- the state from SQL (`inferq.metrics.StateCollector`): jobs by state, unfinished items, the oldest queued chunk's
  age, webhook deliveries by state.

**Several server processes** (``inferq serve --workers N``): ``inferq serve`` points ``PROMETHEUS_MULTIPROC_DIR`` at a
fresh directory before uvicorn starts its processes; each process then writes its counts to files there, and
whichever process answers a scrape adds up every process's files (prometheus-client's multiprocess mode), so one
scrape of the port sees the whole server. Without the variable (one process, or the app in a test) the counts live in
the app's own registry.

The access line (logger ``inferq.access``; one JSON object with ``INFERQ_LOG_FORMAT=json``) holds ``method``,
``route``, ``path`` (without its query string), ``status``, ``seconds`` and ``bytes_in``; never a header, so never
the Authorization header (and `inferq.logs` redacts any ``iq_`` key that reached a message anyway).
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inferq.metrics import MULTIPROC_ENV, StateCollector

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from sqlalchemy.orm import Session, sessionmaker

access_log = logging.getLogger("inferq.access")

#: Latency buckets: a health check (a millisecond) to a long streamed download (minutes).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
#: The route label of a request no route matched (a scanner's random paths stay one series).
UNMATCHED = "<unmatched>"
#: Routes not logged line by line: probes and scrapes every few seconds would drown the rest.
QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})

API_METRICS = (
    "inferq_api_requests_total",
    "inferq_api_request_seconds",
    "inferq_api_upload_bytes_total",
)


class ApiMetrics:
    """The API's counters and histogram, in ``registry`` (the app's own); in multiprocess mode their values go to
    the shared directory's files instead, and `exposition` reads those."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "inferq_api_requests",
            "HTTP requests answered, by route template, method and status code.",
            ("route", "method", "status"),
            registry=self.registry,
        )
        self.seconds = Histogram(
            "inferq_api_request_seconds",
            "Time from a request's start to its response's last byte, by route template and method.",
            ("route", "method"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.upload_bytes = Counter(
            "inferq_api_upload_bytes",
            "Request body bytes received, by route template (the files submitted to POST /v1/jobs).",
            ("route",),
            registry=self.registry,
        )
        self.state: StateCollector | None = None

    def watch_state(self, sessions: sessionmaker[Session], cache_seconds: float) -> None:
        """Export the state from SQL too (made when the app starts, with its engine)."""
        self.state = StateCollector(sessions, cache_seconds)

    def exposition(self) -> tuple[bytes, str]:
        """The text a scrape gets, and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        path = os.environ.get(MULTIPROC_ENV)
        registry: CollectorRegistry
        if path:
            from prometheus_client.multiprocess import MultiProcessCollector

            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=path)
        else:
            registry = CollectorRegistry()
            registry.register(_Forward(self.registry))
        if self.state is not None:
            registry.register(self.state)
        return generate_latest(registry), CONTENT_TYPE_LATEST


class _Forward:
    """Another registry's metrics, as a collector."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Any:
        return self.registry.collect()


def route_template(scope: Scope) -> str:
    """The template of the route that answered (``/v1/jobs/{job_id}``), or `UNMATCHED`: the request's path with
    each segment that is a path parameter's value put back as ``{name}`` (this holds whatever prefix a router was
    included under, which a route object alone may not know)."""
    from starlette.routing import Mount

    route = scope.get("route")
    if isinstance(route, Mount):  # a mounted app (the page's static files): one series for all its paths
        return f"{route.path}/{{path}}"
    if route is None and scope.get("endpoint") is None:
        return UNMATCHED
    if route is None and scope.get("root_path"):  # a mount, as newer Starlette leaves the scope
        return f"{scope['root_path']}/{{path}}"
    params: dict[str, Any] = scope.get("path_params") or {}
    if not params:
        return str(scope.get("path", ""))
    names = {str(v): k for k, v in params.items()}
    path = str(scope.get("path", ""))
    for value, name in names.items():
        if "/" in value and path.endswith("/" + value):  # a {name:path} parameter (a static file's path)
            return path[: -len(value)] + "{" + name + "}"
    return "/".join("{" + names[segment] + "}" if segment in names else segment for segment in path.split("/"))


class ObserveRequests:
    """ASGI middleware: counts and times every HTTP request, counts its body bytes, writes its access line."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics | None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        received = 0
        status = 500

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        async def status_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, counting_receive, status_send)
        finally:
            seconds = time.perf_counter() - started
            route = route_template(scope)
            method = str(scope.get("method", ""))
            if self.metrics is not None:
                self.metrics.requests.labels(route, method, str(status)).inc()
                self.metrics.seconds.labels(route, method).observe(seconds)
                if received:
                    self.metrics.upload_bytes.labels(route).inc(received)
            if route not in QUIET_ROUTES:
                access_log.info(
                    "%s %s %s %.3fs",
                    method,
                    route,
                    status,
                    seconds,
                    extra={
                        "method": method,
                        "route": route,
                        "path": str(scope.get("path", "")),
                        "status": status,
                        "seconds": round(seconds, 6),
                        "bytes_in": received,
                    },
                )
