"""The HTTP triggers in ``/openapi.json`` and ``/docs``: real nats-server, real engine. A
trigger's operation carries its workflow's schemas and the answers the route really gives;
triggers made, disabled, enabled or deleted at runtime show at the next read."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import shutil
import threading
from typing import Any

import jsonschema
import pytest
from http_support import ApiHarness, assert_error, assert_valid_openapi

SECRET = "an-http-trigger-secret"
ORDER = {"type": "object", "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}}, "required": ["sku"]}
# input_schema is checked against the run's input, the trigger envelope: the body is at data.body.
ENVELOPE = {
    "type": "object",
    "properties": {"data": {"type": "object", "properties": {"body": {"$ref": "#/$defs/Order"}}}},
    "$defs": {"Order": ORDER},
}
ORDERS = {
    "name": "orders",
    "input_schema": ENVELOPE,
    "output_schema": ORDER,
    "steps": [
        {"id": "reply", "type": "respond", "config": {"status": 201, "body_from": "data.body"}},
        {"id": "after", "task": "later", "depends_on": ["reply"]},  # never done: the run waits
    ],
    "triggers": [
        {"id": "orders-api", "http": {"path": "/api/orders", "max_body_bytes": 64, "secret": SECRET}},
        {"id": "orders-off", "http": {"path": "/api/orders/off"}, "enabled": False},
    ],
}
PLAIN = {"name": "plain", "steps": [{"id": "reply", "type": "respond"}]}


def sign(body: bytes) -> dict[str, str]:
    return {"X-Signature-256": "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()}


async def document(h: ApiHarness) -> dict[str, Any]:
    answer = await h.http.get("/openapi.json")
    assert answer.status_code == 200, answer.text
    doc: dict[str, Any] = answer.json()
    return doc


def conforms(doc: dict[str, Any], schema: Any, value: Any) -> None:
    """``value`` matches ``schema``, its refs resolved in ``doc`` (as an OpenAPI client would)."""
    jsonschema.Draft202012Validator({**doc, "allOf": [schema]}).validate(value)


def assert_as_documented(doc: dict[str, Any], path: str, method: str, answer: Any) -> None:
    """The answer's status is one the operation declares, with its body and headers."""
    declared = doc["paths"][path][method]["responses"]
    assert str(answer.status_code) in declared, (answer.status_code, sorted(declared))
    response = declared[str(answer.status_code)]
    conforms(doc, response["content"]["application/json"]["schema"], answer.json())
    for name, header in response.get("headers", {}).items():
        if header.get("required"):
            assert name.lower() in answer.headers, name


def test_an_http_trigger_is_documented_with_its_workflows_schemas_and_real_answers(nats_url, run):
    async def body():
        async with ApiHarness(nats_url) as h:
            registered = await h.http.post("/workflows", json=ORDERS)
            assert registered.status_code == 201, registered.text
            doc = await document(h)
            assert_valid_openapi(doc)
            assert "/api/orders/off" not in doc["paths"]  # disabled
            for path in ("/workflows", "/runs", "/triggers", "/hooks/{hook}", "/openapi.json"):
                assert path in doc["paths"], path  # the own routes stay
            op = doc["paths"]["/api/orders"]["post"]
            assert list(doc["paths"]["/api/orders"]) == ["post"]
            body_schema = op["requestBody"]["content"]["application/json"]["schema"]
            assert body_schema == {"$ref": "#/components/schemas/workflow.orders.input/$defs/Order"}
            assert doc["components"]["schemas"]["workflow.orders.input"]["$defs"]["Order"] == ORDER
            assert doc["components"]["schemas"]["workflow.orders.output"] == ORDER
            assert op["security"] == [{"httpTriggerSignature": []}]
            scheme = doc["components"]["securitySchemes"]["httpTriggerSignature"]
            assert (scheme["type"], scheme["in"], scheme["name"]) == ("apiKey", "header", "X-Signature-256")
            assert SECRET not in (await h.http.get("/openapi.json")).text
            assert sorted(op["responses"]) == ["201", "400", "401", "413", "422", "499", "500", "502", "503", "504"]
            assert op["responses"]["201"]["headers"]["X-Dagnats-Run-Id"]["required"] is True
            # What the route answers is what the document says.
            order = b'{"sku": "A-1", "qty": 3}'
            answered = await h.http.post("/api/orders", content=order, headers=sign(order))
            assert answered.status_code == 201 and answered.json() == {"sku": "A-1", "qty": 3}, answered.text
            assert_as_documented(doc, "/api/orders", "post", answered)
            unsigned = await h.http.post("/api/orders", content=order)
            assert_error(unsigned, 401, "invalid_signature")
            assert_as_documented(doc, "/api/orders", "post", unsigned)
            wrong = b'{"qty": 3}'
            refused = await h.http.post("/api/orders", content=wrong, headers=sign(wrong))
            assert_error(refused, 422, "invalid_input")
            assert_as_documented(doc, "/api/orders", "post", refused)
            large = b'{"sku": "' + b"x" * 100 + b'"}'
            too_large = await h.http.post("/api/orders", content=large, headers=sign(large))
            assert_error(too_large, 413, "payload_too_large")
            assert_as_documented(doc, "/api/orders", "post", too_large)
            page = await h.http.get("/docs")
            assert page.status_code == 200 and 'fetch("/openapi.json"' in page.text

    run(body())


def test_triggers_made_disabled_enabled_and_deleted_at_runtime_show_at_the_next_read(nats_url, run):
    async def body():
        async with ApiHarness(nats_url) as h:
            await h.http.post("/workflows", json=PLAIN)
            assert not [p for p in (await document(h))["paths"] if p.startswith("/api/")]
            route = {"path": "/api/plain", "method": "PUT"}
            made = await h.http.post("/triggers", json={"id": "plain-api", "workflow": "plain", "http": route})
            assert made.status_code == 201, made.text
            doc = await document(h)
            assert_valid_openapi(doc)
            op = doc["paths"]["/api/plain"]["put"]
            assert op["security"] == [{}] and "httpTriggerSignature" not in doc["components"]["securitySchemes"]
            assert op["requestBody"]["content"]["application/json"]["schema"] == {}  # no input_schema
            assert op["responses"]["200"]["content"] == {"application/json": {"schema": {}}}
            answered = await h.http.put("/api/plain", json={"n": 1})
            assert answered.status_code == 200 and "x-dagnats-run-id" in answered.headers
            await h.http.post("/triggers/plain-api/disable")
            assert "/api/plain" not in (await document(h))["paths"]
            await h.http.post("/triggers/plain-api/enable")
            assert "put" in (await document(h))["paths"]["/api/plain"]
            await h.http.delete("/triggers/plain-api")
            assert "/api/plain" not in (await document(h))["paths"]
            # Declared in a definition: registering it is enough, registering without it removes it.
            declared = PLAIN | {"triggers": [{"id": "plain-get", "http": {"path": "/api/plain", "method": "GET"}}]}
            await h.http.post("/workflows", json=declared)
            assert "requestBody" not in (await document(h))["paths"]["/api/plain"]["get"]
            await h.http.post("/workflows", json=PLAIN)
            assert "/api/plain" not in (await document(h))["paths"]

    run(body())


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs Debian's chromium)")
def test_the_docs_page_lists_the_http_triggers_in_a_browser(nats_url):
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="docs-engine", daemon=True)
    thread.start()

    def call(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(30)

    async def start() -> tuple[Any, Any]:
        from dagnats.infra.http.app import build_app
        from dagnats.infra.http.server import HttpServer, bind

        from harness import EngineHarness

        engine = EngineHarness(nats_url)
        await engine.__aenter__()
        await engine.client.register(ORDERS)
        server = HttpServer(build_app(engine.api), bind("127.0.0.1", 0))
        await server.start()
        return engine, server

    async def stop(engine: Any, server: Any) -> None:
        await server.stop()
        await engine.__aexit__(None, None, None)

    engine, server = call(start())
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page()
            page.goto(server.url + "/docs")
            page.wait_for_selector("text=http triggers")
            page.click("summary:has-text('http trigger orders-api')")
            text = page.text_content("#api") or ""
            assert "Run workflow orders (http trigger orders-api)" in text
            assert "Needs the header: X-Signature-256" in text and '"sku"' in text
            assert "/api/orders/off" not in text
            browser.close()
    finally:
        call(stop(engine, server))
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
