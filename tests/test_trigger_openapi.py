"""The HTTP triggers' part of the OpenAPI document, synthesized from triggers and definitions
(infra/http/trigger_openapi.py): pure, no NATS."""

from __future__ import annotations

import json

from http_support import assert_valid_openapi

from dagnats.domain.definition import WorkflowDef, workflow_from_object
from dagnats.domain.triggers import HttpRoute, Trigger, Webhook
from dagnats.infra.http.app import TITLE, VERSION, all_endpoints
from dagnats.infra.http.endpoints import openapi_document
from dagnats.infra.http.trigger_openapi import trigger_openapi, with_triggers

SECRET = "a-secret-of-16-chars-or-more"
ORDER = {"type": "object", "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}}, "required": ["sku"]}
# The run's input is the trigger envelope: the request body is at data.body, its query at data.query.
ENVELOPE = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://example.com/quote-input",
    "type": "object",
    "properties": {"data": {"$ref": "#/$defs/Request"}},
    "required": ["data"],
    "$defs": {
        "Request": {
            "type": "object",
            "properties": {
                "body": {"$ref": "#/$defs/Order"},
                "query": {"type": "object", "properties": {"currency": {"type": "string", "enum": ["EUR", "USD"]}}},
            },
        },
        "Order": ORDER,
    },
}
QUOTE = {"type": "object", "properties": {"total": {"type": "number"}}, "required": ["total"]}


def quote(**fields) -> WorkflowDef:
    steps = [
        {"id": "price", "task": "price"},
        {
            "id": "reply",
            "type": "respond",
            "depends_on": ["price"],
            "config": {"status": 201, "headers": {"X-Quoted-By": "dagnats", "Content-Length": "1"}},
        },
    ]
    return workflow_from_object(
        {"name": "quote", "steps": steps, "input_schema": ENVELOPE, "output_schema": QUOTE} | fields
    )


def http(trigger_id: str, path: str, workflow: str = "quote", enabled: bool = True, **route) -> Trigger:
    return Trigger(id=trigger_id, workflow=workflow, enabled=enabled, http=HttpRoute(path=path, **route))


def base_document() -> dict:
    return openapi_document(all_endpoints(), TITLE, VERSION)


def test_an_http_trigger_becomes_an_operation_with_the_body_and_answer_of_its_workflow():
    api = trigger_openapi([http("quote-api", "/api/quote", idempotency_header="Idempotency-Key")], {"quote": quote()})
    op = api.paths["/api/quote"]["post"]
    assert op["operationId"] == "http_trigger_quote-api" and op["tags"] == ["http triggers"]
    body = op["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/workflow.quote.input/$defs/Order"}
    assert op["requestBody"]["required"] is True
    # The whole input schema is a component, its local refs pointing into it, $schema and $id dropped.
    stored = api.schemas["workflow.quote.input"]
    assert "$schema" not in stored and "$id" not in stored
    assert stored["$defs"]["Order"] == ORDER
    assert stored["properties"]["data"] == {"$ref": "#/components/schemas/workflow.quote.input/$defs/Request"}
    answer = op["responses"]["201"]
    assert answer["content"] == {"application/json": {"schema": {"$ref": "#/components/schemas/workflow.quote.output"}}}
    assert api.schemas["workflow.quote.output"] == QUOTE
    assert answer["headers"]["X-Dagnats-Run-Id"]["required"] is True
    assert answer["headers"]["X-Quoted-By"]["example"] == "dagnats" and "Content-Length" not in answer["headers"]
    assert "200" not in op["responses"]  # the respond step answers 201
    idempotency = [p for p in op["parameters"] if p["in"] == "header"]
    assert idempotency == [
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "schema": {"type": "string"},
            "description": idempotency[0]["description"],
        }
    ]
    assert op["security"] == [{}] and not api.security_schemes
    assert op["x-dagnats-trigger"] == {
        "id": "quote-api",
        "workflow": "quote",
        "timeout_ms": 30_000,
        "max_body_bytes": 1 << 20,
    }


def test_the_errors_are_the_ones_the_route_answers_and_run_outcomes_carry_the_run_id():
    api = trigger_openapi([http("quote-api", "/api/quote")], {"quote": quote()})
    responses = api.paths["/api/quote"]["post"]["responses"]
    assert sorted(responses) == ["201", "400", "413", "422", "499", "500", "502", "503", "504"]
    error = {"$ref": "#/components/schemas/HttpTriggerError"}
    for code in ("400", "413", "422", "499", "500", "502", "503", "504"):
        assert responses[code]["content"] == {"application/json": {"schema": error}}, code
    assert api.schemas["HttpTriggerError"]["required"] == ["error", "message"]
    assert "run_id" in api.schemas["HttpTriggerError"]["properties"]
    for code, required in (("499", True), ("502", True), ("504", True), ("500", False), ("503", False)):
        assert responses[code]["headers"]["X-Dagnats-Run-Id"]["required"] is required, code
    for code in ("400", "413", "422"):  # refused before a run exists
        assert "headers" not in responses[code], code
    # No input_schema: no 422; a singleton: a 409; no respond step: no success answer.
    bare = workflow_from_object({"name": "bare", "steps": [{"id": "a", "task": "ta"}], "singleton": {"mode": "skip"}})
    api = trigger_openapi([http("bare-api", "/api/bare", workflow="bare")], {"bare": bare})
    assert sorted(api.paths["/api/bare"]["post"]["responses"]) == [
        "400",
        "409",
        "413",
        "499",
        "500",
        "502",
        "503",
        "504",
    ]


def test_a_secret_requires_the_signature_header_and_is_never_shown():
    api = trigger_openapi([http("quote-api", "/api/quote", secret=SECRET)], {"quote": quote()})
    op = api.paths["/api/quote"]["post"]
    assert op["security"] == [{"httpTriggerSignature": []}]
    assert "401" in op["responses"]
    scheme = api.security_schemes["httpTriggerSignature"]
    assert (scheme["type"], scheme["in"], scheme["name"]) == ("apiKey", "header", "X-Signature-256")
    assert SECRET not in json.dumps([api.paths, api.schemas, api.security_schemes])


def test_a_method_without_a_body_gets_no_request_body_but_its_query_parameters():
    api = trigger_openapi([http("quote-get", "/api/quote", method="GET")], {"quote": quote()})
    op = api.paths["/api/quote"]["get"]
    assert "requestBody" not in op
    assert op["parameters"] == [
        {"name": "currency", "in": "query", "required": False, "schema": {"type": "string", "enum": ["EUR", "USD"]}}
    ]


def test_disabled_and_other_triggers_are_left_out_and_two_methods_share_a_path():
    triggers = [
        http("quote-api", "/api/quote"),
        http("quote-del", "/api/quote", method="DELETE"),
        http("off", "/api/off", enabled=False),
        Trigger(id="hook", workflow="quote", webhook=Webhook(path="/hooks/quote")),
    ]
    api = trigger_openapi(triggers, {"quote": quote()})
    assert list(api.paths) == ["/api/quote"]
    assert sorted(api.paths["/api/quote"]) == ["delete", "post"]
    assert "requestBody" not in api.paths["/api/quote"]["delete"]


def test_an_input_schema_that_does_not_describe_the_body_leaves_it_any_json():
    wf = quote(input_schema={"type": "object", "required": ["trigger"]})
    api = trigger_openapi([http("quote-api", "/api/quote")], {"quote": wf})
    op = api.paths["/api/quote"]["post"]
    assert op["requestBody"] == {"required": False, "content": {"application/json": {"schema": {}}}}
    assert op["parameters"] == [] and "422" in op["responses"]


def test_a_trigger_whose_workflow_is_not_registered_answers_404():
    api = trigger_openapi([http("ghost-api", "/api/ghost", workflow="ghost")], {})
    op = api.paths["/api/ghost"]["post"]
    assert "404" in op["responses"] and not any(code.startswith("2") for code in op["responses"])
    assert op["requestBody"]["content"]["application/json"]["schema"] == {}


def test_a_respond_step_with_an_error_status_also_admits_the_error_body():
    steps = [{"id": "reply", "type": "respond", "config": {"status": 503}}]
    wf = workflow_from_object({"name": "busy", "steps": steps})
    op = trigger_openapi([http("busy-api", "/api/busy", workflow="busy")], {"busy": wf}).paths["/api/busy"]["post"]
    schema = op["responses"]["503"]["content"]["application/json"]["schema"]
    assert schema == {"anyOf": [{}, {"$ref": "#/components/schemas/HttpTriggerError"}]}


def test_refs_in_data_are_left_alone_and_a_property_named_like_a_keyword_is_still_a_schema():
    schema = {
        "type": "object",
        "properties": {
            "data": {
                "type": "object",
                "properties": {"body": {"$ref": "#"}, "enum": {"$ref": "#/$defs/E"}},
            }
        },
        "$defs": {"E": {"const": {"$ref": "#/not/a/ref"}}},
    }
    wf = quote(input_schema=schema)
    api = trigger_openapi([http("quote-api", "/api/quote")], {"quote": wf})
    body = api.paths["/api/quote"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/workflow.quote.input"}
    stored = api.schemas["workflow.quote.input"]
    data = stored["properties"]["data"]["properties"]
    assert data["enum"] == {"$ref": "#/components/schemas/workflow.quote.input/$defs/E"}
    assert stored["$defs"]["E"] == {"const": {"$ref": "#/not/a/ref"}}


def test_the_document_with_triggers_is_valid_openapi_and_keeps_every_own_route():
    base = base_document()
    triggers = [
        http("quote-api", "/api/quote", secret=SECRET, idempotency_header="Idempotency-Key"),
        http("quote-get", "/api/quote", method="GET"),
        http("ghost-api", "/api/ghost", workflow="ghost"),
    ]
    doc = with_triggers(base, triggers, {"quote": quote()})
    assert_valid_openapi(doc)
    assert {p: doc["paths"][p] for p in base["paths"]} == base["paths"]
    assert set(doc["paths"]) - set(base["paths"]) == {"/api/quote", "/api/ghost"}
    assert doc["components"]["securitySchemes"]["bearer"] == base["components"]["securitySchemes"]["bearer"]
    assert doc["security"] == base["security"]
    assert base == base_document()  # the startup document is not changed
    assert json.loads(json.dumps(doc)) == doc  # JSON values only


def test_with_no_enabled_http_trigger_the_document_is_the_own_one():
    base = base_document()
    assert with_triggers(base, [], {}) is base
    assert with_triggers(base, [http("off", "/api/off", enabled=False)], {"quote": quote()}) is base
