"""The Starlette application: every route of the HTTP surface, the guard, the error bodies.

``build_app(plane)`` mounts the REST API (``api.ROUTES``) and, as their
modules add them, the HTTP-worker bridge, triggers and console; serves the
OpenAPI document of all of it at ``/openapi.json`` (with the ``/api/...``
routes of the enabled HTTP triggers as they are at each request:
trigger_openapi.py) with a docs page at ``/docs``, and health, readiness and
metrics. Unknown routes and methods, and any unexpected failure, answer with
the same ``{"error", "message"}`` JSON body as every other refusal.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from . import console
from .docs_page import DOCS_PAGE
from .endpoints import (
    DEFAULT_MAX_BODY,
    Call,
    Endpoint,
    EndpointSet,
    json_response,
    openapi_document,
    serve_endpoint,
)
from .guard import Guard
from .metrics import render
from .operations import Operations
from .request_triggers import METHODS, api_trigger
from .schemas import Health
from .trigger_openapi import current_document

log = logging.getLogger("dagnats.http")

TITLE = "dagnats HTTP API"
VERSION = "0.1.0"


def all_endpoints() -> list[Endpoint]:
    from . import api, bulk, scheduled, triggers, workers

    modules = (scheduled, bulk, api, workers, triggers)  # /runs/bulk before /runs/{run_id}
    return [e for m in modules for e in m.ROUTES.endpoints] + _own.endpoints


def build_app(
    plane: Any,
    *,
    api_token: str | None = None,
    bridge_token: str | None = None,
    max_body: int | None = None,
    extra_routes: list[BaseRoute] | None = None,
) -> Any:
    """The ASGI app over ``plane`` (a started ControlPlane). Tokens default to the
    environment (``DAGNATS_API_TOKEN``, ``DAGNATS_BRIDGE_TOKEN``)."""
    limit = max_body or min(DEFAULT_MAX_BODY, plane.nc.max_payload)
    endpoints = all_endpoints()
    routes: list[BaseRoute] = _routes(endpoints, limit)
    routes.append(Route("/api/{route:path}", api_trigger, methods=METHODS))
    routes += console.ROUTES + (extra_routes or [])
    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
    )
    app.state.plane = plane
    app.state.ops = Operations(plane)
    app.state.max_body = limit
    app.state.openapi = openapi_document(endpoints, TITLE, VERSION)
    api_token = os.environ.get("DAGNATS_API_TOKEN") if api_token is None else api_token
    bridge_token = os.environ.get("DAGNATS_BRIDGE_TOKEN") if bridge_token is None else bridge_token
    return Guard(app, api_token, bridge_token)


def _routes(endpoints: list[Endpoint], max_body: int) -> list[BaseRoute]:
    """One route per path, serving each of its methods: a wrong method is then a 405
    whose ``Allow`` lists every method of the path, not only the first route's."""
    by_path: dict[str, dict[str, Any]] = {}
    for e in endpoints:
        by_path.setdefault(e.path, {})[e.method] = serve_endpoint(e, max_body)
    return [Route(path, _by_method(handlers), methods=list(handlers)) for path, handlers in by_path.items()]


def _by_method(handlers: dict[str, Any]) -> Any:
    async def handle(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        answer: Response = await handlers[method](request)
        return answer

    return handle


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    code = codes.get(exc.status_code, "http_error")
    message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
    return json_response(
        {"error": code, "message": message.get(exc.status_code, str(exc.detail))},
        exc.status_code,
        headers=dict(exc.headers or {}),
    )


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("HTTP %s %s failed", request.method, request.url.path, exc_info=exc)
    return json_response({"error": "internal_error", "message": f"{type(exc).__name__}"}, 500)


# ---- this module's own routes: health, readiness, metrics, OpenAPI, docs -----------------

_own = EndpointSet()


@_own.add("GET", "/health", "Liveness: NATS is connected", "engine", answer=Health, public=True, errors=(503,))
async def health(call: Call) -> Any:
    plane = call.request.app.state.plane
    if not plane.nc.is_connected:
        return json_response({"error": "unavailable", "message": "NATS not connected"}, 503)
    return {"status": "ok"}


@_own.add(
    "GET",
    "/ready",
    "Readiness: the engine serves and NATS is connected",
    "engine",
    answer=Health,
    public=True,
    errors=(503,),
)
async def ready(call: Call) -> Any:
    plane = call.request.app.state.plane
    if not plane.nc.is_connected or not getattr(plane, "serving", True):
        return json_response({"error": "not_ready", "message": "the engine is not ready"}, 503)
    return {"status": "ready"}


@_own.add("GET", "/metrics", "Prometheus metrics", "engine", content="text/plain", errors=())
async def metrics(call: Call) -> Any:
    text = render(call.request.app.state.plane)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


@_own.add("GET", "/openapi.json", "This document: these routes and the enabled HTTP triggers", "engine", errors=())
async def openapi(call: Call) -> Any:
    return await current_document(call.request)


@_own.add("GET", "/docs", "The API's documentation page", "engine", content="text/html", errors=())
async def docs(call: Call) -> Any:
    return HTMLResponse(DOCS_PAGE)
