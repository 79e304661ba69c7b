"""Endpoints: one declaration per route, read twice — by the router and by OpenAPI.

An ``Endpoint`` names its method, path, the msgspec types of its query,
body and answer, and the coroutine that serves it. ``serve_endpoint`` turns
one into a Starlette handler that checks every path parameter as an
identifier (nothing from a URL reaches a NATS subject unchecked), decodes
the query and the JSON body (content type, size bound, msgspec), calls the
coroutine and encodes its answer; ``openapi_document`` describes the same
list, so the document cannot drift from what is served.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from dagnats.domain.errors import DagnatsError
from dagnats.domain.identifiers import IDENTIFIER_RE, check_identifier

from .errors import ApiError, ErrorBody, from_dagnats

DEFAULT_MAX_BODY = 1024 * 1024
_ENCODER = msgspec.json.Encoder()

Serve = Callable[["Call"], Awaitable[Any]]


@dataclass(frozen=True)
class Call:
    """What a route's coroutine gets: the request, its checked path ids, query and body."""

    request: Request
    path: dict[str, str]
    query: Any
    body: Any


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    serve: Serve
    summary: str
    tag: str
    query: type | None = None
    body: Any = None  # a msgspec type, or None for no body
    answer: Any = dict[str, Any]
    status: int = 200
    errors: tuple[int, ...] = (400, 404)
    public: bool = False  # no bearer token needed (health)
    content: str = "application/json"  # of the answer
    body_required: bool = False  # else an empty body reads as {} (or null for an Any body)
    # The body's type in the OpenAPI document when the route decodes it more leniently and
    # checks it itself (a workflow definition: every problem at once, as a 422).
    body_schema: Any = None

    @property
    def documented_body(self) -> Any:
        return self.body_schema if self.body_schema is not None else self.body

    @property
    def params(self) -> list[str]:
        return re.findall(r"{(\w+)}", self.path)


@dataclass
class EndpointSet:
    endpoints: list[Endpoint] = field(default_factory=list)

    def add(self, method: str, path: str, summary: str, tag: str, **options: Any) -> Callable[[Serve], Serve]:
        def register(serve: Serve) -> Serve:
            self.endpoints.append(Endpoint(method, path, serve, summary, tag, **options))
            return serve

        return register


def encode(value: Any) -> bytes:
    return _ENCODER.encode(value)


def json_response(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(encode(value), status, headers=headers, media_type="application/json")


def error_response(err: ApiError) -> Response:
    body = {"error": err.code, "message": err.message, **err.extra}
    return json_response(body, err.status)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes (before reading it if
    Content-Length says so, else as soon as the stream goes past it)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "invalid_content_length", f"Content-Length {declared!r} is not a number")
        if int(declared) > limit:
            raise ApiError(413, "payload_too_large", f"the body is {declared} bytes, over the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "payload_too_large", f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def is_json(request: Request) -> bool:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


async def decode_json_body(request: Request, kind: Any, limit: int, required: bool = False) -> Any:
    data = await read_body(request, limit)
    if not data.strip():
        if required:
            raise ApiError(400, "missing_body", "this route needs a JSON body")
        data = b"{}" if kind is not Any else b"null"
    elif not is_json(request):
        shown = request.headers.get("content-type") or "none"
        raise ApiError(415, "unsupported_media_type", f"send the body as application/json, not {shown}")
    try:
        return msgspec.json.decode(data, type=kind)
    except msgspec.ValidationError as err:
        raise ApiError(400, "invalid_body", str(err)) from None
    except msgspec.DecodeError as err:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {err}") from None
    except RecursionError:
        raise ApiError(400, "invalid_json", "the body nests too deeply") from None


def decode_query(request: Request, kind: type | None) -> Any:
    if kind is None:
        return None
    try:
        return msgspec.convert(dict(request.query_params), kind, strict=False)
    except msgspec.ValidationError as err:
        raise ApiError(400, "invalid_query", str(err)) from None


def check_path(request: Request, names: list[str]) -> dict[str, str]:
    return {name: check_identifier(name.replace("_", " "), request.path_params[name]) for name in names}


def serve_endpoint(endpoint: Endpoint, max_body: int) -> Callable[[Request], Awaitable[Response]]:
    async def handle(request: Request) -> Response:
        try:
            path = check_path(request, endpoint.params)
            query = decode_query(request, endpoint.query)
            body = None
            if endpoint.body is not None:
                body = await decode_json_body(request, endpoint.body, max_body, required=endpoint.body_required)
            answer = await endpoint.serve(Call(request, path, query, body))
        except ApiError as err:
            return error_response(err)
        except DagnatsError as err:
            return error_response(from_dagnats(err))
        if isinstance(answer, Response):
            return answer
        return json_response(answer, endpoint.status)

    handle.__name__ = endpoint.serve.__name__
    return handle


# ---- OpenAPI 3.1 ------------------------------------------------------------------------

_REASONS = {
    400: "Bad request",
    401: "Missing or wrong bearer token",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    408: "Timed out",
    409: "Conflict with the current state",
    413: "Body too large",
    415: "Unsupported media type",
    422: "Unprocessable",
    503: "Unavailable",
}


def openapi_document(endpoints: list[Endpoint], title: str, version: str) -> dict[str, Any]:
    """An OpenAPI 3.1 document for ``endpoints``, its schemas generated by msgspec."""
    kinds: list[Any] = [ErrorBody]
    for e in endpoints:
        kinds += [k for k in (e.documented_body, e.answer) if k is not None and k is not Any]
    schemas, components = msgspec.json.schema_components(kinds, ref_template="#/components/schemas/{name}")
    by_kind = {repr(k): s for k, s in zip(kinds, schemas, strict=True)}
    paths: dict[str, dict[str, Any]] = {}
    for e in endpoints:
        paths.setdefault(e.path, {})[e.method.lower()] = _operation(e, by_kind)
    document = {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "DAGNATS_API_TOKEN, when set"}
            },
        },
        "security": [{"bearer": []}, {}],
    }
    # As served: JSON values only (a tuple default becomes a list), the same to every reader.
    served: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(document))
    return served


def _operation(e: Endpoint, by_kind: dict[str, Any]) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": e.summary,
        "operationId": f"{e.method.lower()}_{re.sub(r'[^A-Za-z0-9]+', '_', e.path).strip('_')}",
        "tags": [e.tag],
        "parameters": [_path_parameter(name) for name in e.params] + _query_parameters(e.query),
        "responses": {str(e.status): _answer(e, by_kind)},
    }
    if e.public:
        op["security"] = [{}]
    if e.body is not None:
        schema = {} if e.documented_body is Any else by_kind[repr(e.documented_body)]
        op["requestBody"] = {
            "required": e.body_required,
            "content": {"application/json": {"schema": schema}},
        }
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
    codes = set(e.errors) | ({400} if e.params or e.query or e.body is not None else set())
    if e.body is not None:
        codes |= {413, 415}
    if not e.public:
        codes.add(401)
    for code in sorted(codes):
        op["responses"][str(code)] = {"description": _REASONS.get(code, "Error"), **error}
    return op


def _answer(e: Endpoint, by_kind: dict[str, Any]) -> dict[str, Any]:
    if e.content != "application/json":
        return {"description": "OK", "content": {e.content: {"schema": {"type": "string"}}}}
    return {"description": "OK", "content": {"application/json": {"schema": by_kind[repr(e.answer)]}}}


def _path_parameter(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": SEQ_PATTERN if name == "seq" else IDENTIFIER_RE.pattern},
    }


SEQ_PATTERN = "^[1-9][0-9]{0,17}$"  # a dead letter's stream sequence (api._seq)


def _query_parameters(kind: type | None) -> list[dict[str, Any]]:
    if kind is None:
        return []
    (schema,), components = msgspec.json.schema_components([kind], ref_template="{name}")
    struct = components[schema["$ref"]]
    params = []
    for name, prop in struct.get("properties", {}).items():
        params.append({"name": name, "in": "query", "required": name in struct.get("required", []), "schema": prop})
    return params
