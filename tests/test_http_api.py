"""The REST API over a real engine: each operation answers as the control plane does."""

from __future__ import annotations

import asyncio

from http_support import APPROVE, ONE_STEP, ApiHarness, assert_error, assert_valid_openapi

from harness import FakeWorker


def test_workflows_register_list_show_delete(nats_url, run):
    async def body():
        async with ApiHarness(nats_url) as h:
            r = await h.http.post("/workflows", json=ONE_STEP)
            assert r.status_code == 201 and r.json()["status"] == "registered", r.text
            assert [w["name"] for w in (await h.http.get("/workflows")).json()] == ["one"]
            assert (await h.http.get("/workflows/one")).json()["steps"][0]["id"] == "a"
            assert (await h.http.delete("/workflows/one")).json()["deleted"] is True
            assert_error(await h.http.get("/workflows/one"), 404, "workflow_not_found")

    run(body())


def test_run_starts_waits_and_reports_output_and_events(nats_url, run):
    async def body():
        async with ApiHarness(nats_url) as h:
            await h.http.post("/workflows", json=ONE_STEP)
            r = await h.http.post("/runs", json={"workflow": "one", "input": {"x": 1}})
            assert r.status_code == 201, r.text
            run_id = r.json()["run_id"]
            waiting = await h.http.get(f"/runs/{run_id}/wait", params={"timeout": 0.2})
            assert waiting.json()["finished"] is False
            worker = FakeWorker(h.nc, "ta")
            waited, _ = await asyncio.gather(h.http.get(f"/runs/{run_id}/wait?timeout=10"), worker.complete({"y": 2}))
            assert waited.json()["finished"] is True and waited.json()["run"]["status"] == "completed"
            out = (await h.http.get(f"/runs/{run_id}/output")).json()
            assert out == {"run_id": run_id, "status": "completed", "output": {"y": 2}}
            events = (await h.http.get(f"/runs/{run_id}/events")).json()
            assert events["events"][0]["type"] == "workflow.started" and events["next"] is None
            assert (await h.http.get(f"/runs/{run_id}/inspect")).status_code == 200
            assert (await h.http.get(f"/runs/{run_id}")).json()["steps"]["a"]["status"] == "completed"
            assert (await h.http.delete(f"/runs/{run_id}")).json()["deleted"] is True

    run(body())


def test_idempotency_key_answers_a_second_start_with_the_first_run(nats_url, run):
    async def body():
        async with ApiHarness(nats_url) as h:
            await h.http.post("/workflows", json=ONE_STEP)
            first = await h.http.post("/runs", json={"workflow": "one", "idempotency_key": "order-7"})
            again = await h.http.post("/runs", json={"workflow": "one", "idempotency_key": "order-7"})
            assert first.json()["run_id"] == again.json()["run_id"]

    run(body())


def test_a_start_continues_the_trace_of_its_w3c_headers_and_a_repeat_links_it(nats_url, run):
    caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    again = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    headers = {"traceparent": caller, "tracestate": "congo=t61rcWkgMzE", "baggage": "tenant=acme"}

    async def body():
        async with ApiHarness(nats_url) as h:
            await h.http.post("/workflows", json=ONE_STEP)
            first = await h.http.post("/runs", json={"workflow": "one", "idempotency_key": "k"}, headers=headers)
            run_id = first.json()["run_id"]
            repeat = {"workflow": "one", "idempotency_key": "k", "trace_parent": again}
            assert (await h.http.post("/runs", json=repeat)).json() == {"run_id": run_id, "status": "deduplicated"}
            assert (await h.http.get(f"/runs/{run_id}")).json()["trace_id"] == caller.split("-")[1]
            for _ in range(100):
                events = (await h.http.get(f"/runs/{run_id}/events")).json()["events"]
                if any(e["type"] == "workflow.start_repeated" for e in events):
                    break
                await asyncio.sleep(0.05)
            return events

    events = run(body())
    assert events[0]["payload"]["trace_state"] == "congo=t61rcWkgMzE"
    assert events[0]["payload"]["baggage"] == "tenant=acme"
    (repeated,) = [e for e in events if e["type"] == "workflow.start_repeated"]
    assert repeated["payload"]["caller"] == again


def test_run_list_filters_and_pages_by_cursor(nats_url, run):
    async def body():
        async with ApiHarness(nats_url) as h:
            await h.http.post("/workflows", json=ONE_STEP)
            ids = [(await h.http.post("/runs", json={"workflow": "one"})).json()["run_id"] for _ in range(3)]
            for run_id in ids:
                await h.engine.wait_status(run_id, "running")
            page = (await h.http.get("/runs", params={"workflow": "one", "limit": 2})).json()
            assert len(page["runs"]) == 2 and page["next"]
            rest = (await h.http.get("/runs", params={"workflow": "one", "limit": 2, "cursor": page["next"]})).json()
            assert {r["run_id"] for r in page["runs"] + rest["runs"]} == set(ids) and rest["next"] is None
            assert (await h.http.get("/runs", params={"status": "completed"})).json()["runs"] == []
            future = (await h.http.get("/runs", params={"since": "2999-01-01T00:00:00Z"})).json()
            assert future["runs"] == []
            assert_error(await h.http.get("/runs", params={"since": "yesterday"}), 400)
            # An empty cursor is the first page; a date alone is its midnight UTC; an offset's "+"
            # sent unencoded (a space once decoded) still reads as an offset.
            first = (await h.http.get("/runs", params={"workflow": "one", "limit": 2, "cursor": ""})).json()
            assert first == page
            assert (
                len((await h.http.get("/runs", params={"workflow": "one", "since": "2000-01-01"})).json()["runs"]) == 3
            )
            assert (await h.http.get("/runs?workflow=one&until=2000-01-01T02:00:00+02:00")).json()["runs"] == []
            assert_error(await h.http.get("/runs", params={"status": "weird"}), 400)

    run(body())


def test_cancel_pause_resume_and_signal(nats_url, run):
    async def body():
        async with ApiHarness(nats_url) as h:
            await h.http.post("/workflows", json=ONE_STEP)
            run_id = (await h.http.post("/runs", json={"workflow": "one"})).json()["run_id"]
            await h.engine.wait_status(run_id, "running")
            assert (await h.http.post(f"/runs/{run_id}/pause")).json()["pausing"] is True
            await h.engine.wait_status(run_id, {"paused", "pausing"})
            assert (await h.http.post(f"/runs/{run_id}/resume")).json()["resumed"] is True
            sent = await h.http.post(f"/runs/{run_id}/signal/go", json={"n": 1})
            assert sent.json() == {"run_id": run_id, "signal": "go", "sent": True}
            cancelled = await h.http.post(f"/runs/{run_id}/cancel", json={"reason": "test"})
            assert cancelled.json()["status"] == "cancelled", cancelled.text
            assert_error(await h.http.post(f"/runs/{run_id}/pause"), 409, "invalid_run_state")

    run(body())


def test_approve_and_reject_over_http(nats_url, run):
    async def body():
        async with ApiHarness(nats_url) as h:
            await h.http.post("/workflows", json=APPROVE)
            run_id = (await h.http.post("/runs", json={"workflow": "gate"})).json()["run_id"]
            await h.engine.wait_step(run_id, "ok", "running")
            r = await h.http.post(f"/runs/{run_id}/approve/ok", json={"comment": "ship", "by": "ann"})
            assert r.status_code == 200, r.text
            await h.engine.wait_step(run_id, "ok", "completed")
            assert_error(await h.http.post(f"/runs/{run_id}/reject/ok", json={}), 409)

    run(body())


def test_limits_status_dead_letters_and_metrics(nats_url, run):
    async def body():
        async with ApiHarness(nats_url) as h:
            assert (await h.http.get("/limits")).json()["limits"] == []
            assert (await h.http.get("/dead-letters")).json() == {"dead_letters": []}
            assert_error(await h.http.get("/dead-letters/42"), 404, "dead_letter_not_found")
            assert_error(await h.http.get("/dead-letters/abc"), 400)
            assert (await h.http.get("/status")).json()["nats"]["connected"] is True
            metrics = await h.http.get("/metrics")
            assert metrics.headers["content-type"].startswith("text/plain") and "dagnats_up 1" in metrics.text
            assert (await h.http.get("/health")).json() == {"status": "ok"}
            assert (await h.http.get("/ready")).json() == {"status": "ready"}

    run(body())


def test_openapi_document_covers_the_whole_api_and_has_a_docs_page(nats_url, run):
    async def body():
        async with ApiHarness(nats_url) as h:
            doc = (await h.http.get("/openapi.json")).json()
            assert doc["openapi"].startswith("3.1")
            assert_valid_openapi(doc)
            for path in ("/workflows", "/runs", "/runs/{run_id}/wait", "/dead-letters", "/limits", "/health"):
                assert path in doc["paths"], path
            assert "StartRun" in doc["components"]["schemas"]
            page = await h.http.get("/docs")
            assert page.headers["content-type"].startswith("text/html") and "/openapi.json" in page.text

    run(body())


def test_bulk_start_cancel_and_retry_each_with_a_dry_run(nats_url, run):
    async def body():
        async with ApiHarness(nats_url) as h:
            await h.http.post("/workflows", json=ONE_STEP)
            dry = (await h.http.post("/runs/bulk", json={"workflow": "one", "inputs": [1, 2], "dry_run": True})).json()
            assert dry == {"run_ids": [], "total": 2, "dry_run": True}
            started = await h.http.post("/runs/bulk", json={"workflow": "one", "inputs": [1, 2, 3]})
            assert started.status_code == 201 and started.json()["total"] == 3, started.text
            for run_id in started.json()["run_ids"]:
                await h.engine.wait_status(run_id, "running")
            would = (await h.http.post("/runs/cancel", json={"workflow": "one", "dry_run": True})).json()
            assert sorted(would["cancelled"]) == sorted(started.json()["run_ids"]) and would["dry_run"] is True
            assert (await h.http.get("/runs", params={"status": "running"})).json()["runs"]  # nothing cancelled
            done = (await h.http.post("/runs/cancel", json={"workflow": "one"})).json()
            assert len(done["cancelled"]) == 3
            for run_id in started.json()["run_ids"]:
                await h.engine.wait_status(run_id, "cancelled")
            for _ in range(100):  # the run list reads snapshots: a moment behind the runs
                listed = (await h.http.get("/runs", params={"status": "cancelled"})).json()["runs"]
                if len(listed) == 3:
                    break
                await asyncio.sleep(0.05)
            retry = {"workflow": "one", "status": "cancelled"}
            planned = (await h.http.post("/runs/retry", json={**retry, "dry_run": True})).json()
            assert len(planned["retried"]) == 3 and "new_run_id" not in planned["retried"][0]
            retried = (await h.http.post("/runs/retry", json=retry)).json()
            assert all(r["new_run_id"] for r in retried["retried"])
            bad = await h.http.post("/runs/bulk", json={"workflow": "one", "inputs": [1] * 1001})
            assert bad.status_code == 400

    run(body())
