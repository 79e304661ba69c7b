"""Triggers declared in a definition, and HTTP request/response triggers answered by a respond
step: outcomes, idempotency, and bad input that stores nothing. Real nats-server, real engine."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from pathlib import Path

from http_support import ApiHarness, assert_error

from dagnats.infra.worker import load_worker

from harness import FakeWorker
from worker_support import running

SECRET = "an-http-trigger-secret"

ECHO = {
    "name": "echo",
    "steps": [
        {
            "id": "reply",
            "type": "respond",
            "config": {"status": 201, "body_from": "data.body", "headers": {"X-Kind": "echo"}},
        },
        {"id": "after", "task": "later", "depends_on": ["reply"]},
    ],
    "triggers": [
        {
            "id": "echo-api",
            "http": {
                "path": "/api/echo/v1",
                "method": "POST",
                "timeout_ms": 10_000,
                "max_body_bytes": 64,
                "secret": SECRET,
                "idempotency_header": "Idempotency-Key",
            },
        },
        {"id": "echo-hook", "webhook": {"path": "/hooks/echo"}, "enabled": False},
    ],
}


def sign(body: bytes) -> dict[str, str]:
    return {"X-Signature-256": "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()}


def with_trigger(name: str, steps: list, **http) -> dict:
    route = {"path": f"/api/{name}", "method": "POST", "timeout_ms": 10_000, **http}
    return {"name": name, "steps": steps, "triggers": [{"id": f"{name}-api", "http": route}]}


def test_registering_writes_declared_triggers_and_a_route_conflict_refuses_the_workflow(nats_url, run):
    async def body():
        async with ApiHarness(nats_url) as h:
            registered = await h.http.post("/workflows", json=ECHO)
            assert registered.status_code == 201, registered.text
            assert registered.json()["triggers"] == ["echo-api", "echo-hook"]
            listed = {t["id"]: t for t in (await h.http.get("/triggers")).json()["triggers"]}
            assert listed["echo-api"]["workflow"] == "echo" and listed["echo-api"]["declared"]
            assert listed["echo-hook"]["enabled"] is False
            assert "triggers" not in (await h.http.get("/workflows/echo")).json()
            thief = {
                "name": "thief",
                "steps": [{"id": "a", "task": "ta"}],
                "triggers": [ECHO["triggers"][0] | {"id": "x"}],
            }
            refused = assert_error(await h.http.post("/workflows", json=thief), 422)
            assert 'route conflict: POST /api/echo/v1 already registered by trigger "echo-api"' in refused["message"]
            assert (await h.http.get("/workflows/thief")).status_code == 404
            # Declared again without the webhook: it goes, the other stays (same id replaces itself).
            again = await h.http.post("/workflows", json=ECHO | {"triggers": ECHO["triggers"][:1]})
            assert again.status_code == 201 and again.json()["action"] == "updated"
            ids = [t["id"] for t in (await h.http.get("/triggers")).json()["triggers"]]
            assert ids == ["echo-api"]
            # The Python client (and so the CLI) registers the same way.
            await h.engine.client.register(with_trigger("other", [{"id": "a", "task": "ta"}]))
            ids = [t["id"] for t in (await h.http.get("/triggers")).json()["triggers"]]
            assert ids == ["echo-api", "other-api"]
            await h.http.delete("/workflows/other")
            ids = [t["id"] for t in (await h.http.get("/triggers")).json()["triggers"]]
            assert ids == ["echo-api"]

    run(body())


def test_an_http_trigger_answers_with_the_respond_step_and_the_run_goes_on(nats_url, run):
    async def body():
        async with ApiHarness(nats_url) as h:
            await h.http.post("/workflows", json=ECHO)
            payload = b'{"hello": "world"}'
            answer = await h.http.post("/api/echo/v1?x=1", content=payload, headers=sign(payload))
            assert answer.status_code == 201, answer.text
            assert answer.json() == {"hello": "world"} and answer.headers["x-kind"] == "echo"
            run_id = answer.headers["x-dagnats-run-id"]
            view = (await h.http.get(f"/runs/{run_id}")).json()
            assert view["input"]["trigger"] == "http"
            assert view["input"]["data"]["query"] == {"x": "1"} and view["input"]["data"]["body"] == {"hello": "world"}
            assert "x-signature-256" not in view["input"]["data"]["headers"]
            assert view["steps"]["reply"]["status"] == "completed"
            assert view["steps"]["reply"]["output"]["status"] == 201
            await FakeWorker(h.nc, "later").complete("done", timeout=10)
            assert (await h.engine.client.wait(run_id, timeout=10))["status"] == "completed"

    run(body())


def test_a_repeated_idempotency_key_replays_the_first_answer_without_a_second_run(nats_url, run):
    async def body():
        async with ApiHarness(nats_url) as h:
            await h.http.post("/workflows", json=ECHO)
            first_body, second_body = b'{"n": 1}', b'{"n": 2}'
            key = {"Idempotency-Key": "order-42"}
            first = await h.http.post("/api/echo/v1", content=first_body, headers=sign(first_body) | key)
            # The run answers at its respond step and records its end after: counted once it ended.
            await h.http.get(f"/runs/{first.headers['x-dagnats-run-id']}/wait", params={"timeout": 10})
            stored = await h.stored()
            second = await h.http.post("/api/echo/v1", content=second_body, headers=sign(second_body) | key)
            assert (second.status_code, second.json()) == (first.status_code, first.json()) == (201, {"n": 1})
            assert second.headers["x-dagnats-run-id"] == first.headers["x-dagnats-run-id"]
            assert await h.stored() == stored
            other = await h.http.post("/api/echo/v1", content=second_body, headers=sign(second_body))
            assert other.headers["x-dagnats-run-id"] != first.headers["x-dagnats-run-id"]

    run(body())


def test_a_repeat_after_a_timeout_gets_the_response_the_run_gave_later(nats_url, run):
    async def body():
        async with ApiHarness(nats_url) as h:
            steps = [{"id": "work", "task": "late"}, {"id": "reply", "type": "respond", "depends_on": ["work"]}]
            wf = with_trigger("late", steps, timeout_ms=200, idempotency_header="Idempotency-Key")
            await h.http.post("/workflows", json=wf)
            key = {"Idempotency-Key": "k-1"}
            first = await h.http.post("/api/late", content=b"{}", headers=key)
            assert_error(first, 504, "workflow_timeout")
            run_id = first.headers["x-dagnats-run-id"]
            await FakeWorker(h.nc, "late").complete({"price": 3}, timeout=10)
            await h.engine.wait_step(run_id, "reply", "completed")
            again = await h.http.post("/api/late", content=b"{}", headers=key)
            assert (again.status_code, again.json(), again.headers["x-dagnats-run-id"]) == (200, {"price": 3}, run_id)

    run(body())


def test_a_call_the_workflows_own_idempotency_key_deduplicates_gets_the_earlier_runs_answer(nats_url, run):
    async def body():
        async with ApiHarness(nats_url) as h:
            steps = [{"id": "reply", "type": "respond", "config": {"body_from": "data.body"}}]
            wf = with_trigger("dedup", steps) | {"idempotency_key": "data.body.order"}
            await h.http.post("/workflows", json=wf)
            first = await h.http.post("/api/dedup", json={"order": 7, "n": 1})
            second = await h.http.post("/api/dedup", json={"order": 7, "n": 2})
            assert first.json() == second.json() == {"order": 7, "n": 1}
            assert first.headers["x-dagnats-run-id"] == second.headers["x-dagnats-run-id"]

    run(body())


def test_bad_calls_to_an_http_trigger_are_clear_4xx_and_store_nothing(nats_url, run):
    async def body():
        async with ApiHarness(nats_url) as h:
            await h.http.post("/workflows", json=ECHO)
            payload = b"{}"
            before = await h.stored()
            assert_error(await h.http.post("/api/echo/v1", content=payload), 401, "invalid_signature")
            bad = {"X-Signature-256": "sha256=" + "0" * 64}
            assert_error(await h.http.post("/api/echo/v1", content=payload, headers=bad), 401, "invalid_signature")
            wrong = await h.http.get("/api/echo/v1")
            assert assert_error(wrong, 405, "method_not_allowed")["allowed"] == ["POST"]
            assert wrong.headers["allow"] == "POST"
            assert_error(await h.http.post("/api/nothing", content=payload, headers=sign(payload)), 404, "not_found")
            big = json.dumps({"x": "y" * 100}).encode()
            assert_error(await h.http.post("/api/echo/v1", content=big, headers=sign(big)), 413, "payload_too_large")
            for hostile in ("/api/echo/v1/..", "/api/%2e%2e/echo/v1", "/api/echo/*", "/api/echo/>", "/api/echo%2Fv1"):
                assert_error(await h.http.post(hostile, content=payload, headers=sign(payload)), 404)
            assert await h.stored() == before

    run(body())


def test_a_run_that_fails_times_out_or_never_responds_gets_its_own_status(nats_url, run):
    async def body():
        async with ApiHarness(nats_url) as h:
            work = [{"id": "work", "task": "slow"}, {"id": "reply", "type": "respond", "depends_on": ["work"]}]
            await h.http.post("/workflows", json=with_trigger("fails", work))
            await h.http.post("/workflows", json=with_trigger("waits", work, timeout_ms=300))
            await h.http.post(
                "/workflows", json=with_trigger("silent", [{"id": "a", "type": "sleep", "config": {"duration": "1ms"}}])
            )
            call = asyncio.create_task(h.http.post("/api/fails", content=b"{}"))
            await FakeWorker(h.nc, "slow").fail("broken", failure_type="permanent", timeout=10)
            failed = assert_error(await call, 500, "workflow_failed")
            assert failed["run_id"] == (await call).headers["x-dagnats-run-id"]
            timed_out = await h.http.post("/api/waits", content=b"{}")
            assert_error(timed_out, 504, "workflow_timeout")
            view = (await h.http.get(f"/runs/{timed_out.headers['x-dagnats-run-id']}")).json()
            assert view["status"] == "running"
            assert_error(await h.http.post("/api/silent", content=b"{}"), 502, "no_response")
            held = [{"id": "work", "task": "held"}, {"id": "reply", "type": "respond", "depends_on": ["work"]}]
            await h.http.post("/workflows", json=with_trigger("cancels", held))
            call = asyncio.create_task(h.http.post("/api/cancels", content=b"{}"))
            task, _ = await FakeWorker(h.nc, "held").next(timeout=10)
            assert (await h.http.post(f"/runs/{task.run_id}/cancel")).status_code < 300
            cancelled = await call
            assert_error(cancelled, 503, "workflow_cancelled")
            assert cancelled.headers["x-dagnats-run-id"] == task.run_id

    run(body(), timeout=60)


def test_the_http_trigger_example_answers_a_quote_and_audits_it_after(nats_url, run, monkeypatch):
    example = Path(__file__).resolve().parents[1] / "examples" / "http-trigger"
    monkeypatch.setenv("DAGNATS_NATS_URL", nats_url)
    worker = load_worker(str(example / "worker.py"))

    async def body():
        async with ApiHarness(nats_url) as h, running(worker):
            registered = await h.http.post("/workflows", content=(example / "workflow.json").read_bytes(), headers=JSON)
            assert registered.json()["triggers"] == ["quote-api", "quote-requests"]
            order = {"Idempotency-Key": "order-42"} | JSON
            answer = await h.http.post("/api/quote", content=b'{"sku": "A-1", "qty": 3}', headers=order)
            assert answer.status_code == 200, answer.text
            assert answer.json() == {"sku": "A-1", "qty": 3, "total": 29.97}
            assert answer.headers["x-quoted-by"] == "dagnats"
            final = await h.engine.client.wait(answer.headers["x-dagnats-run-id"], timeout=10)
            assert final["output"] == "quoted 29.97 for A-1 (HTTP 200)"
            unknown = await h.http.post("/api/quote", content=b'{"sku": "Z-9"}', headers=JSON)
            assert_error(unknown, 500, "workflow_failed")

    run(body())


JSON = {"Content-Type": "application/json"}


def test_a_caller_that_leaves_before_the_answer_is_a_499_and_the_run_goes_on(nats_url, run):
    """Driven through the ASGI interface itself, as a server does: the body, then the
    caller's disconnect while the run has not answered."""

    async def body():
        async with ApiHarness(nats_url) as h:
            steps = [{"id": "work", "task": "slow"}, {"id": "reply", "type": "respond", "depends_on": ["work"]}]
            await h.http.post("/workflows", json=with_trigger("slow", steps, idempotency_header="Idempotency-Key"))
            messages = [{"type": "http.request", "body": b"{}", "more_body": False}]
            left = asyncio.Event()

            async def receive() -> dict:
                if messages:
                    return messages.pop(0)
                await left.wait()
                return {"type": "http.disconnect"}

            sent: list[dict] = []

            async def send(message: dict) -> None:
                sent.append(message)

            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "POST",
                "scheme": "http",
                "path": "/api/slow",
                "raw_path": b"/api/slow",
                "query_string": b"",
                "root_path": "",
                "headers": [(b"host", b"dagnats.test"), (b"idempotency-key", b"k-9"), (b"content-length", b"2")],
                "client": ("127.0.0.1", 50000),
                "server": ("127.0.0.1", 8080),
            }
            call = asyncio.create_task(h.app(scope, receive, send))
            task, msg = await FakeWorker(h.nc, "slow").next()  # the run started and waits on its worker
            left.set()
            await asyncio.wait_for(call, 10)
            start = next(m for m in sent if m["type"] == "http.response.start")
            run_id = dict(start["headers"])[b"x-dagnats-run-id"].decode()
            status_after = (await h.http.get(f"/runs/{run_id}")).json()["status"]
            await FakeWorker(h.nc, "slow").report(task, "step.completed", {"price": 5})
            await msg.ack()
            await h.engine.wait_step(run_id, "reply", "completed")
            again = await h.http.post("/api/slow", content=b"{}", headers={"Idempotency-Key": "k-9"})
            again_run = again.headers["x-dagnats-run-id"]
            return start["status"], status_after, again.status_code, again.json(), again_run, run_id

    status, after, again_status, again_body, again_run, run_id = run(body())
    assert (status, after) == (499, "running")
    assert (again_status, again_body, again_run) == (200, {"price": 5}, run_id)
