"""The HTTP API in-process: an EngineHarness on a real nats-server, its ASGI app
driven by httpx without a socket (``ApiHarness``), and how many messages the
engine's streams hold (``stored``), to show that refused input stores nothing;
``assert_valid_openapi`` checks a served document."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import httpx

from dagnats.infra.http.app import build_app
from dagnats.infra.wire.names import HISTORY_STREAM, INBOX_STREAM

from harness import EngineHarness

ONE_STEP = {"name": "one", "steps": [{"id": "a", "task": "ta"}]}
APPROVE = {
    "name": "gate",
    "steps": [
        {"id": "ok", "type": "approval", "config": {"subject": "ops", "timeout": 600_000_000_000}},
        {"id": "after", "task": "tb", "depends_on": ["ok"]},
    ],
}


class ApiHarness:
    def __init__(self, url: str, **options: Any) -> None:
        self.engine = EngineHarness(url)
        self.options = options

    async def __aenter__(self) -> ApiHarness:
        await self.engine.__aenter__()
        self.app = build_app(self.engine.api, **self.options)
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://dagnats.test")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()
        await self.engine.__aexit__(*exc)

    @property
    def nc(self) -> Any:
        return self.engine.nc

    async def stored(self) -> tuple[int, int]:
        js = self.engine.nc.jetstream()
        history = await js.stream_info(HISTORY_STREAM)
        inbox = await js.stream_info(INBOX_STREAM)
        return history.state.messages, inbox.state.messages


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) >= {"error", "message"} and body["message"], body
    if code is not None:
        assert body["error"] == code, body
    return body


def assert_valid_openapi(doc: dict[str, Any]) -> None:
    """``doc`` is valid OpenAPI 3.1 (the specification's own JSON Schema, as schemathesis
    holds it), every local ``$ref`` in it points at something, and operation ids are unique."""
    import schemathesis  # slow to import: only the tests that check a document pay for it

    schemathesis.openapi.from_dict(doc).validate()
    for ref in _refs(doc):
        assert ref.startswith("#/"), ref
        node: Any = doc
        for token in ref[2:].split("/"):
            token = unquote(token).replace("~1", "/").replace("~0", "~")
            assert isinstance(node, dict) and token in node, f"{ref} points at nothing"
            node = node[token]
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


def _refs(value: Any) -> list[str]:
    if isinstance(value, dict):
        own = [value["$ref"]] if isinstance(value.get("$ref"), str) else []
        return own + [r for v in value.values() for r in _refs(v)]
    if isinstance(value, list):
        return [r for v in value for r in _refs(v)]
    return []
