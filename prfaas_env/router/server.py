"""The HTTP sidecar: a :class:`~prfaas_env.router.core.Router` behind a small ASGI app.

    python -m prfaas_env.router serve --bundle DIR --port 8080

Endpoints:

- ``POST /route``: body = one live state (JSON; schema at ``GET /schema``, also the bundle's
  ``state.schema.json``). 200 with ``{"action", "label", "source", "reason", "scores",
  "bundle"}``; 400 for a body that is not JSON, 422 for one that breaks the schema (the
  message names the JSON path), 413 for a body over :data:`MAX_BODY` bytes.
- ``GET /healthz``: 200 with the bundle's content hash, algorithm and fallback.
- ``GET /metrics``: Prometheus text: decisions by source, fallbacks by reason, rejected
  requests by status, and a decision-latency histogram (time inside the router, s).
- ``GET /schema``: the JSON Schema of the state.

Stack: Starlette on uvicorn (with httptools and uvloop). A router's sidecar sits on the
request path, so it must add little latency and never fall over on bad input; uvicorn is the
ASGI server the Python serving engines use (vLLM, SGLang), and Starlette adds routing without a
validation layer of its own, so each request is checked once, against the same JSON Schema the
bundle publishes for hosts in other languages, compiled to Python by ``fastjsonschema`` (8 us
per state here, against 280 us for the interpreting ``jsonschema``). Decisions take well
under a millisecond of CPU, so they run inline on the event loop rather than in a thread
pool.
"""

from __future__ import annotations

import json
import time
from typing import Any

import fastjsonschema
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from prfaas_env.observation.live import LiveStateError
from prfaas_env.router.core import Router

MAX_BODY = 1 << 16  # bytes; a state is ~1 KB per cluster
LATENCY_BUCKETS = (25e-6, 50e-6, 100e-6, 200e-6, 500e-6, 1e-3, 2e-3, 5e-3, 10e-3, 50e-3)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _reason_kind(reason: str) -> str:
    for kind in ("missing", "invalid", "model failed", "no allowed action"):
        if reason.startswith(kind):
            return kind.replace(" ", "_")
    return "other"


def create_app(router: Router) -> Starlette:
    """The sidecar app for ``router`` (metrics registry per app, so tests can make several)."""
    disable_created_metrics()  # the *_created series only add noise for a sidecar
    schema = router.live.schema()
    validate = fastjsonschema.compile(schema)
    registry = CollectorRegistry()
    decisions = Counter(
        "prfaas_router_decisions",
        "Routing decisions by who made them",
        ["source"],
        registry=registry,
    )
    fallbacks = Counter(
        "prfaas_router_fallbacks",
        "Decisions made by the fallback heuristic, by the kind of their first reason",
        ["reason"],
        registry=registry,
    )
    rejected = Counter(
        "prfaas_router_bad_requests",
        "Requests refused without a decision, by HTTP status",
        ["status"],
        registry=registry,
    )
    latency = Histogram(
        "prfaas_router_decision_seconds",
        "Time to decide one request inside the router (parse, encode, model, fallback), s",
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )
    manifest = router.bundle.manifest
    health = {
        "status": "ok",
        "content_hash": manifest["content_hash"],
        "algo": manifest["run"]["algo"],
        "actions": router.labels,
        "fallback": manifest["fallback"]["policy"],
    }

    def refuse(status: int, message: str, **extra: Any) -> JSONResponse:
        rejected.labels(str(status)).inc()
        return JSONResponse({"error": message, **extra}, status_code=status)

    async def route(request: Request) -> Response:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY:
            return refuse(413, f"body of {declared} bytes exceeds {MAX_BODY}")
        chunks, size = [], 0
        async for chunk in request.stream():  # capped even without a Content-Length
            size += len(chunk)
            if size > MAX_BODY:
                return refuse(413, f"body exceeds {MAX_BODY} bytes")
            chunks.append(chunk)
        try:
            state = json.loads(b"".join(chunks), parse_constant=_no_constant)
        except (ValueError, RecursionError) as exc:  # bad JSON, NaN/Infinity, huge numbers
            return refuse(400, f"body is not valid JSON: {str(exc)[:200]}")
        try:
            validate(state)
        except fastjsonschema.JsonSchemaValueException as exc:
            path = "/" + "/".join(str(p) for p in exc.path[1:])  # path[0] is "data"
            return refuse(422, f"{path}: {exc.message}", path=path)
        start = time.perf_counter()
        try:
            decision = router.decide(state)
        except LiveStateError as exc:
            return refuse(422, str(exc))
        latency.observe(time.perf_counter() - start)
        decisions.labels(decision.source).inc()
        if decision.reason is not None:
            fallbacks.labels(_reason_kind(decision.reason)).inc()
        return JSONResponse({**decision.to_dict(), "bundle": health["content_hash"]})

    async def healthz(_: Request) -> Response:
        return JSONResponse(health)

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def get_schema(_: Request) -> Response:
        return JSONResponse(schema)

    return Starlette(
        routes=[
            Route("/route", route, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/schema", get_schema, methods=["GET"]),
        ]
    )


def serve(router: Router, host: str, port: int) -> None:
    """Run the sidecar until interrupted (uvicorn, one process, no access log)."""
    import uvicorn

    uvicorn.run(create_app(router), host=host, port=port, log_level="warning", access_log=False)
