"""A property-based fuzz of the HTTP API against its own OpenAPI document (schemathesis).

The document is the one ``build_app`` serves at ``/openapi.json`` (built from the
same endpoint table, no engine needed); every operation in it becomes a test that
sends a few generated requests, valid and invalid, to a live engine served by
uvicorn on a free port, and checks: no 5xx, and every response (status code,
content type, body) is one the document declares.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from http_support import ONE_STEP
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from dagnats.infra.http.app import TITLE, VERSION, all_endpoints
from dagnats.infra.http.endpoints import openapi_document

TOKEN = "fuzz-token"
EXAMPLES = int(os.environ.get("DAGNATS_FUZZ_EXAMPLES", "12"))  # per operation; raise it for a longer hunt
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    unsupported_method,  # a 405 names every method of the path in Allow
]
LONG_POLL_MS = 200  # a generated poll or wait timeout is cut to this, so one case cannot hold the run

schema = schemathesis.openapi.from_dict(openapi_document(all_endpoints(), TITLE, VERSION))


class LiveApi:
    """An engine and its HTTP API on their own event loop in a thread, at ``url``."""

    def __init__(self, nats_url: str) -> None:
        self.nats_url = nats_url
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-engine", daemon=True)

    def call(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> LiveApi:
        self.thread.start()
        self.call(self._start())
        return self

    async def _start(self) -> None:
        from dagnats.infra.http.app import build_app
        from dagnats.infra.http.server import HttpServer, bind

        from harness import EngineHarness

        self.engine = EngineHarness(self.nats_url)
        await self.engine.__aenter__()
        self.server = HttpServer(build_app(self.engine.api, api_token=TOKEN), bind("127.0.0.1", 0))
        await self.server.start()
        self.url = self.server.url

    async def _stop(self) -> None:
        await self.server.stop()
        await self.engine.__aexit__(None, None, None)

    def __exit__(self, *exc: object) -> None:
        try:
            self.call(self._stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


@pytest.fixture(scope="module")
def live(nats) -> Iterator[LiveApi]:
    with LiveApi(nats.url) as api:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {TOKEN}"
        assert session.post(f"{api.url}/workflows", json=ONE_STEP, timeout=10).status_code in (200, 201)
        started = session.post(f"{api.url}/runs", json={"workflow": ONE_STEP["name"]}, timeout=10)
        assert started.status_code == 201, started.text
        api.run_id = started.json()["run_id"]  # type: ignore[attr-defined]
        api.session = session  # type: ignore[attr-defined]
        yield api
        session.close()


def _short_waits(case: schemathesis.Case) -> None:
    """Long polls and waits answer after their timeout: keep a generated one (or the
    default, when none was generated) short."""
    if case.operation.path == "/v1/tasks/poll" and isinstance(case.body, dict):
        timeout = case.body.get("timeout_ms", LONG_POLL_MS)
        if isinstance(timeout, int) and not isinstance(timeout, bool):
            case.body["timeout_ms"] = min(timeout, LONG_POLL_MS)
    if case.operation.path == "/runs/{run_id}/wait":
        query = dict(case.query or {})
        try:
            long = float(query.get("timeout", 30)) > LONG_POLL_MS / 1000
        except (TypeError, ValueError):
            long = False  # not a number: a 400, at once
        if long:
            query["timeout"] = str(LONG_POLL_MS / 1000)
        case.query = query


def _known_run(case: schemathesis.Case, run_id: str) -> None:
    """Likewise every other generated run id becomes the id of a run that exists."""
    given = (case.path_parameters or {}).get("run_id")
    if isinstance(given, str) and len(given) % 2 == 0:
        case.path_parameters = {**(case.path_parameters or {}), "run_id": run_id}


def _known_workflow(case: schemathesis.Case) -> None:
    """A generated workflow name is all but never registered: send every other start to
    the one that is, so that starts get past the lookup and their answers are checked too."""
    if case.operation.path == "/runs" and case.operation.method.upper() == "POST" and isinstance(case.body, dict):
        name = case.body.get("workflow")
        if isinstance(name, str) and len(name) % 2 == 0:
            case.body["workflow"] = ONE_STEP["name"]


def test_the_fuzzed_document_is_the_served_one(live):
    served = live.session.get(f"{live.url}/openapi.json", timeout=10).json()
    assert served == schema.raw_schema


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)
def test_every_operation_answers_as_documented(case, live):
    _short_waits(case)
    _known_workflow(case)
    _known_run(case, live.run_id)
    case.call_and_validate(base_url=live.url, session=live.session, checks=CHECKS, timeout=10)
