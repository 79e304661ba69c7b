"""The HTTP triggers in the OpenAPI document: one operation per enabled ``http`` trigger.

``/openapi.json`` is dagnats' own routes (``endpoints.openapi_document``, built
once at startup) plus the ``/api/...`` routes of the enabled http triggers,
synthesized on every request from the ``triggers`` KV and the registered
definitions. Triggers change at runtime, on any engine (a registration with
``triggers[]``, ``POST /triggers``, enable, disable, delete): reading the bucket
per request (one KV scan; definitions come from the engine's watched cache)
keeps the document exact with no watch to keep alive, and the document is no
hot path. ``trigger_openapi`` and ``with_triggers`` are pure: triggers and
definitions in, document parts out.

What an operation says, and where it comes from:

- **requestBody** (POST, PUT, PATCH only): a run started by a trigger gets the
  envelope ``{trigger, source, workflow_id, timestamp, data: {method, path,
  query, headers, body}}`` as its input, and the workflow's ``input_schema`` is
  checked against that envelope; so the body's schema is the part of
  ``input_schema`` at ``data.body`` (found through ``properties``, following
  local ``$ref``\\s), and ``data.query``'s properties become query parameters.
  An ``input_schema`` that says nothing about ``data.body`` leaves the body any
  JSON. A start it refuses is a 422.
- **The answer**: each ``respond`` step's ``status``, ``content_type`` and
  ``headers``, with ``output_schema`` as its schema (as the Go dagnats maps it),
  and ``X-Dagnats-Run-Id``. A workflow with no respond step answers 502.
- **Errors**, as request_triggers.py answers them: 400, 413, 499, 500, 502,
  503, 504 always; 401 with a secret; 422 with an ``input_schema``; 409 with a
  ``singleton``; 404 when the workflow is not registered. Their body is
  ``{"error", "message", "run_id"?}``.
- **security**: a trigger with a secret requires the HMAC ``X-Signature-256``
  header (an apiKey in header: OpenAPI has no HMAC scheme); one without needs
  nothing (the API token never applies under ``/api/``).

A workflow's schemas are copied to ``components/schemas`` as
``workflow.<name>.input`` and ``.output``, their local refs (``#/$defs/X``,
``#``) rewritten to point there and their root ``$schema`` and ``$id``
dropped: an embedded schema with its own ``$id`` would resolve refs against it,
and OpenAPI 3.1 reads every schema as JSON Schema 2020-12.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from nats.errors import Error as NatsError
from starlette.requests import Request

from dagnats.domain.definition import RespondConfig, WorkflowDef
from dagnats.domain.errors import DefinitionDecodeError, WorkflowNotFound
from dagnats.domain.triggers import Trigger

from .request_triggers import HOP_BY_HOP, RUN_ID_HEADER
from .triggers import store

log = logging.getLogger("dagnats.http.openapi")

TAG = "http triggers"
SIGNATURE_SCHEME = "httpTriggerSignature"
ERROR_SCHEMA = "HttpTriggerError"
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# Keywords whose values are data, not schemas: a {"$ref": ...} inside them is left alone.
DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples", "example"})
# Keywords whose values map names to schemas (a property may be called "enum").
SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})
MAX_REF_HOPS = 16

SIGNATURE = {
    "type": "apiKey",
    "in": "header",
    "name": "X-Signature-256",
    "description": (
        "An HMAC, not a key: `sha256=<hex HMAC-SHA256 of the raw body, keyed with the trigger's secret>`. "
        "Missing or wrong: 401 invalid_signature."
    ),
}
HTTP_TRIGGER_ERROR = {
    "type": "object",
    "properties": {
        "error": {"type": "string"},
        "message": {"type": "string"},
        "run_id": {"type": "string", "description": "The run the call started, once one exists"},
    },
    "required": ["error", "message"],
}
ERRORS = {
    400: "The request cannot be read (a bad Content-Length), or the engine refused the start",
    401: "X-Signature-256 is missing or does not match the body (invalid_signature)",
    404: "The trigger's workflow is not registered (workflow_not_found)",
    409: "The workflow's singleton holds another run (singleton_conflict)",
    413: "The body is over the trigger's max_body_bytes (payload_too_large)",
    422: "The run's input (the trigger envelope) does not match the workflow's input_schema (invalid_input)",
    499: "The caller left before the answer (client_closed); the run goes on",
    500: "The run failed before it responded (workflow_failed)",
    502: "The run completed without a respond step answering (no_response), or its answer is unreadable",
    503: "The run was cancelled before it responded (workflow_cancelled), or NATS is unavailable",
    504: "timeout_ms passed before the run responded (workflow_timeout); the run goes on",
}
ALWAYS = (400, 413, 499, 500, 502, 503, 504)
# The errors a run's outcome gives (request_triggers._respond), so they carry X-Dagnats-Run-Id:
# always, or (False) not when the same status comes from elsewhere (an internal error, NATS).
RUN_OUTCOMES = {499: True, 500: False, 502: True, 503: False, 504: True}


@dataclass(frozen=True)
class TriggerApi:
    """The document parts of the http triggers: paths, component schemas, security schemes."""

    paths: dict[str, dict[str, Any]] = field(default_factory=dict)
    schemas: dict[str, Any] = field(default_factory=dict)
    security_schemes: dict[str, Any] = field(default_factory=dict)


def trigger_openapi(triggers: Iterable[Trigger], definitions: Mapping[str, WorkflowDef]) -> TriggerApi:
    """One operation per enabled http trigger (``definitions`` by workflow name; a
    trigger whose workflow is missing from it is documented as answering 404)."""
    api = TriggerApi()
    for t in sorted((t for t in triggers if t.enabled and t.http is not None), key=_route_key):
        assert t.http is not None
        wf = definitions.get(t.workflow)
        api.paths.setdefault(t.http.path, {})[t.http.method.lower()] = _operation(t, wf)
        if wf is not None:
            api.schemas.update(_workflow_schemas(wf))
        if t.http.secret:
            api.security_schemes[SIGNATURE_SCHEME] = dict(SIGNATURE)
    if api.paths:
        api.schemas[ERROR_SCHEMA] = copy.deepcopy(HTTP_TRIGGER_ERROR)
    return api


def with_triggers(
    document: dict[str, Any], triggers: Iterable[Trigger], definitions: Mapping[str, WorkflowDef]
) -> dict[str, Any]:
    """``document`` (left unchanged) with the http triggers' operations and components added."""
    api = trigger_openapi(triggers, definitions)
    if not api.paths:
        return document
    components = document.get("components", {})
    return {
        **document,
        "paths": {**document["paths"], **api.paths},
        "components": {
            **components,
            "schemas": {**components.get("schemas", {}), **api.schemas},
            "securitySchemes": {**components.get("securitySchemes", {}), **api.security_schemes},
        },
    }


async def current_document(request: Request) -> dict[str, Any]:
    """The served document: the app's own, with the http triggers as they are now."""
    state = request.app.state
    try:
        triggers = [t for t in await store(request).all() if t.enabled and t.http is not None]
        definitions = await _definitions(state.plane.defs, {t.workflow for t in triggers})
    except (NatsError, TimeoutError) as err:  # the own routes are still worth serving
        log.warning("OpenAPI document without the http triggers: NATS did not answer (%s)", err)
        return state.openapi
    return with_triggers(state.openapi, triggers, definitions)


async def _definitions(defs: Any, names: set[str]) -> dict[str, WorkflowDef]:
    """The registered definitions of ``names`` (from the engine's cache); one missing or
    unreadable is left out: its triggers are documented without its schemas, with a 404."""
    found: dict[str, WorkflowDef] = {}
    for name in sorted(names):
        try:
            found[name] = await defs.get(name)
        except (WorkflowNotFound, DefinitionDecodeError):
            continue
    return found


# ---- one operation ------------------------------------------------------------------------


def _route_key(t: Trigger) -> tuple[str, str]:
    assert t.http is not None
    return t.http.path, t.http.method


def _operation(t: Trigger, wf: WorkflowDef | None) -> dict[str, Any]:
    assert t.http is not None
    h = t.http
    op: dict[str, Any] = {
        "summary": f"Run workflow {t.workflow} (http trigger {t.id})",
        "description": _description(t, wf),
        "operationId": f"http_trigger_{t.id}",
        "tags": [TAG],
        "security": [{SIGNATURE_SCHEME: []}] if h.secret else [{}],
        "parameters": _idempotency_parameter(h.idempotency_header) + _query_parameters(wf),
        "responses": _responses(t, wf),
        "x-dagnats-trigger": {
            "id": t.id,
            "workflow": t.workflow,
            "timeout_ms": h.timeout_ms,
            "max_body_bytes": h.max_body_bytes,
        },
    }
    if h.method in BODY_METHODS:
        body = _input_part(wf, "body")
        op["requestBody"] = {
            "required": body is not None,
            "content": {"application/json": {"schema": {} if body is None else body}},
        }
    return op


def _description(t: Trigger, wf: WorkflowDef | None) -> str:
    assert t.http is not None
    text = [wf.description] if wf is not None and wf.description else []
    text.append(
        f"Starts a run of `{t.workflow}` with the trigger envelope as input (the body at `data.body`) "
        f"and answers with its respond step, within {t.http.timeout_ms} ms; the body is at most "
        f"{t.http.max_body_bytes} bytes."
    )
    if t.http.idempotency_header:
        text.append(f"A repeated `{t.http.idempotency_header}` gets the first call's answer and starts nothing.")
    return " ".join(text)


def _idempotency_parameter(header: str | None) -> list[dict[str, Any]]:
    if not header:
        return []
    about = "Calls with the same value within an hour share one run and its answer"
    return [{"name": header, "in": "header", "required": False, "schema": {"type": "string"}, "description": about}]


def _query_parameters(wf: WorkflowDef | None) -> list[dict[str, Any]]:
    if wf is None or wf.input_schema is None:
        return []
    query = _resolved(wf.input_schema, _at(wf.input_schema, ("data", "query")))
    if not isinstance(query, dict) or not isinstance(query.get("properties"), dict):
        return []
    required = query.get("required", [])
    base = _component_ref(wf.name, "input")
    return [
        {"name": name, "in": "query", "required": name in required, "schema": _rebased(schema, base)}
        for name, schema in query["properties"].items()
    ]


def _responses(t: Trigger, wf: WorkflowDef | None) -> dict[str, Any]:
    assert t.http is not None
    responses: dict[str, Any] = {}
    if wf is not None:
        for status, configs in sorted(_respond_steps(wf).items()):
            responses[str(status)] = _answer(wf, configs)
    codes = set(ALWAYS) | ({401} if t.http.secret else set())
    if wf is None:
        codes.add(404)
    elif wf.input_schema is not None:
        codes.add(422)
    if wf is not None and wf.singleton is not None:
        codes.add(409)
    error = {"$ref": f"#/components/schemas/{ERROR_SCHEMA}"}
    for code in sorted(codes):
        if str(code) in responses:  # a respond step answers with an error status of its own
            answer = responses[str(code)]
            json_content = answer["content"].get("application/json")
            if json_content is None:
                answer["content"]["application/json"] = {"schema": error}
            else:
                json_content["schema"] = {"anyOf": [json_content["schema"], error]}
            answer["description"] += f"; or: {ERRORS[code]}"
            continue
        responses[str(code)] = {"description": ERRORS[code], "content": {"application/json": {"schema": error}}}
        if code in RUN_OUTCOMES:
            responses[str(code)]["headers"] = {RUN_ID_HEADER: _run_id_header(required=RUN_OUTCOMES[code])}
    return responses


def _respond_steps(wf: WorkflowDef) -> dict[int, list[tuple[str, RespondConfig]]]:
    by_status: dict[int, list[tuple[str, RespondConfig]]] = {}
    for step in wf.steps:
        if step.type != "respond":
            continue
        try:
            config = step.parsed_config()
        except ValueError:
            continue
        if isinstance(config, RespondConfig):
            by_status.setdefault(config.status, []).append((step.id, config))
    return by_status


def _answer(wf: WorkflowDef, configs: list[tuple[str, RespondConfig]]) -> dict[str, Any]:
    schema: Any = {"$ref": _component_ref(wf.name, "output")} if wf.output_schema is not None else {}
    headers = {RUN_ID_HEADER: _run_id_header(required=True)}
    for step_id, config in configs:
        for name, value in (config.headers or {}).items():
            if name.lower() not in HOP_BY_HOP and name.lower() != RUN_ID_HEADER.lower():
                about = f"Set by respond step {step_id}"
                headers[name] = {"schema": {"type": "string"}, "description": about, "example": value}
    steps = ", ".join(step_id for step_id, _ in configs)
    return {
        "description": f"The answer of respond step {steps} (schema: the workflow's output_schema)",
        "headers": headers,
        "content": {config.content_type: {"schema": schema} for _, config in configs},
    }


def _run_id_header(required: bool) -> dict[str, Any]:
    about = "The run this call started (or, for a repeated idempotency key, the first call's run)"
    if not required:
        about += "; absent when no run was started"
    return {"required": required, "schema": {"type": "string"}, "description": about}


# ---- schemas ------------------------------------------------------------------------------


def _component_name(workflow: str, part: str) -> str:
    return f"workflow.{workflow}.{part}"


def _component_ref(workflow: str, part: str) -> str:
    return f"#/components/schemas/{_component_name(workflow, part)}"


def _workflow_schemas(wf: WorkflowDef) -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for part, schema in (("input", wf.input_schema), ("output", wf.output_schema)):
        if schema is not None:
            root = {k: v for k, v in schema.items() if k not in ("$schema", "$id")}
            schemas[_component_name(wf.name, part)] = _rebased(root, _component_ref(wf.name, part))
    return schemas


def _input_part(wf: WorkflowDef | None, name: str) -> Any | None:
    """The schema of ``data.<name>`` of the envelope in ``wf``'s input_schema, rebased."""
    if wf is None or wf.input_schema is None:
        return None
    found = _at(wf.input_schema, ("data", name))
    return None if found is None else _rebased(found, _component_ref(wf.name, "input"))


def _at(root: Any, path: tuple[str, ...]) -> Any | None:
    """The subschema of ``root`` for the value at ``path`` (through ``properties``,
    following local refs), or None if ``root`` does not say."""
    schema = root
    for key in path:
        schema = _property(root, schema, key)
        if schema is None:
            return None
    return schema


def _property(root: Any, schema: Any, key: str) -> Any | None:
    for _ in range(MAX_REF_HOPS):
        if not isinstance(schema, dict):
            return None
        properties = schema.get("properties")
        if isinstance(properties, dict) and key in properties:
            return properties[key]
        schema = _local(root, schema.get("$ref"))
    return None


def _resolved(root: Any, schema: Any) -> Any:
    """``schema``, or what its local ``$ref`` points at when it is a bare reference."""
    for _ in range(MAX_REF_HOPS):
        if not isinstance(schema, dict) or "properties" in schema:
            return schema
        target = _local(root, schema.get("$ref"))
        if target is None:
            return schema
        schema = target
    return schema


def _local(root: Any, ref: Any) -> Any | None:
    """What a local JSON-pointer ref (``#``, ``#/$defs/X``) points at in ``root``."""
    if not isinstance(ref, str) or not (ref == "#" or ref.startswith("#/")):
        return None
    node = root
    for token in ref[2:].split("/") if ref != "#" else []:
        token = unquote(token).replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            return None
    return node


def _rebased(schema: Any, base: str) -> Any:
    """A copy of ``schema`` whose local refs point under ``base`` (a ref to its root)."""
    if isinstance(schema, list):
        return [_rebased(s, base) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in DATA_KEYWORDS:
            out[key] = value
        elif key in SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: _rebased(s, base) for name, s in value.items()}
        elif key == "$ref" and isinstance(value, str) and (value == "#" or value.startswith("#/")):
            out[key] = base + value[1:]
        else:
            out[key] = _rebased(value, base)
    return out
