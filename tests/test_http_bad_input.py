"""Bad input over HTTP: each a clear 4xx with a JSON body, and nothing stored."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from http_support import ONE_STEP, ApiHarness, assert_error


def refused(nats_url, run, request, status, code=None, **options):
    """Send ``request(http)`` to a fresh engine; check the refusal and that the
    history and inbox streams hold what they held before."""

    async def body():
        async with ApiHarness(nats_url, **options) as h:
            await h.http.post("/workflows", json=ONE_STEP, headers={"Authorization": "Bearer s3cret"})
            before = await h.stored()
            answer = assert_error(await request(h.http), status, code)
            assert await h.stored() == before
            return answer

    return run(body())


def test_malformed_json_is_a_400(nats_url, run):
    headers = {"content-type": "application/json"}
    refused(
        nats_url, run, lambda c: c.post("/runs", content=b'{"workflow": "one",', headers=headers), 400, "invalid_json"
    )


def test_a_body_that_does_not_fit_names_the_field(nats_url, run):
    answer = refused(
        nats_url, run, lambda c: c.post("/runs", json={"workflow": "one", "inptu": 1}), 400, "invalid_body"
    )
    assert "inptu" in answer["message"]


def test_wrong_content_type_is_a_415(nats_url, run):
    headers = {"content-type": "text/plain"}
    refused(nats_url, run, lambda c: c.post("/runs", content=b'{"workflow":"one"}', headers=headers), 415)


def test_an_oversized_body_is_a_413(nats_url, run):
    big = {"workflow": "one", "input": "x" * 5000}
    refused(nats_url, run, lambda c: c.post("/runs", json=big), 413, "payload_too_large", max_body=4096)


def test_an_unknown_route_is_a_404_and_a_wrong_method_a_405(nats_url, run):
    refused(nats_url, run, lambda c: c.get("/nope"), 404, "not_found")
    refused(nats_url, run, lambda c: c.put("/runs"), 405, "method_not_allowed")


def test_a_405_allows_every_method_of_the_path(nats_url, run):
    # Found by the fuzz run (tests/test_http_fuzz.py): each method was its own route,
    # so a 405 listed only the first one's (PUT /workflows/x said Allow: GET, HEAD).
    async def body():
        async with ApiHarness(nats_url) as h:
            for path, methods in [("/workflows/one", {"GET", "DELETE"}), ("/runs", {"GET", "POST"})]:
                answer = await h.http.put(path)
                assert_error(answer, 405, "method_not_allowed")
                assert {m.strip() for m in answer.headers["allow"].split(",")} - {"HEAD"} == methods
            assert (await h.http.head("/workflows")).status_code == 200

    run(body())


@pytest.mark.parametrize("segment", ["%2e%2e", "*", "%3E", "%2e", "a.b", "a%20b", "x" * 65])
def test_hostile_path_segments_are_refused_before_any_subject(nats_url, run, segment):
    refused(nats_url, run, lambda c: c.post(f"/runs/{segment}/cancel"), 400, "invalid_identifier")


def test_a_missing_or_wrong_token_is_a_401_but_health_is_open(nats_url, run):
    refused(nats_url, run, lambda c: c.post("/runs", json={"workflow": "one"}), 401, "unauthorized", api_token="s3cret")
    wrong = {"Authorization": "Bearer nope"}
    refused(nats_url, run, lambda c: c.get("/runs", headers=wrong), 401, api_token="s3cret")

    async def open_health():
        async with ApiHarness(nats_url, api_token="s3cret") as h:
            assert (await h.http.get("/health")).status_code == 200
            good = await h.http.get("/runs", headers={"Authorization": "Bearer s3cret"})
            assert good.status_code == 200

    run(open_health())


def test_an_unknown_workflow_or_run_is_a_404(nats_url, run):
    refused(nats_url, run, lambda c: c.post("/runs", json={"workflow": "ghost"}), 404, "workflow_not_found")
    refused(nats_url, run, lambda c: c.get("/runs/0123456789abcdef/events"), 404, "run_not_found")


def test_a_wait_with_an_absurd_timeout_is_a_400(nats_url, run):
    refused(nats_url, run, lambda c: c.get("/runs/r1/wait", params={"timeout": 86400}), 400, "invalid_query")
    refused(nats_url, run, lambda c: c.get("/runs/r1/wait", params={"timeout": "soon"}), 400, "invalid_query")


def test_an_invalid_definition_is_a_422_listing_the_problems(nats_url, run):
    cyclic = {"name": "c", "steps": [{"id": "a", "task": "t", "depends_on": ["a"]}]}
    refused(nats_url, run, lambda c: c.post("/workflows", json=cyclic), 422, "workflow_invalid")


def test_a_scheduled_run_waits_in_its_record_and_can_be_cancelled(nats_url, run):
    async def body():
        async with ApiHarness(nats_url) as h:
            await h.http.post("/workflows", json=ONE_STEP)
            r = await h.http.post("/runs", json={"workflow": "one", "run_at": "2099-01-01T00:00:00Z"})
            assert_error(r, 400)  # more than a year ahead
            soon = (datetime.now(UTC) + timedelta(days=1)).isoformat()
            r = await h.http.post("/runs", json={"workflow": "one", "run_at": soon})
            run_id = r.json()["run_id"]
            assert r.status_code == 201 and r.json()["status"] == "scheduled", r.text
            record = (await h.http.get(f"/runs/{run_id}/scheduled")).json()
            assert record["status"] == "scheduled" and record["workflow"] == "one"
            assert_error(await h.http.get(f"/runs/{run_id}"), 404)
            assert (await h.http.delete(f"/runs/{run_id}/scheduled")).json()["status"] == "cancelled"
            assert_error(await h.http.delete(f"/runs/{run_id}/scheduled"), 400)

    run(body())


def test_a_run_at_a_moment_away_starts_then(nats_url, run):
    async def body():
        async with ApiHarness(nats_url) as h:
            await h.http.post("/workflows", json=ONE_STEP)
            at = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
            run_id = (await h.http.post("/runs", json={"workflow": "one", "run_at": at})).json()["run_id"]
            assert_error(await h.http.get(f"/runs/{run_id}"), 404)
            waited = await h.http.get(f"/runs/{run_id}/wait", params={"timeout": 15})
            while waited.status_code == 404:  # the schedule has not fired yet
                await asyncio.sleep(0.1)
                waited = await h.http.get(f"/runs/{run_id}/wait", params={"timeout": 0.1})
            assert waited.json()["run"]["workflow"] == "one"

    run(body())


def test_an_unknown_status_filter_is_refused_as_the_document_says(nats_url, run):
    # Found by the fuzz run: the document allowed any string for `status`, the engine
    # refused all but the run statuses; now the document lists them and the query or
    # body is refused by its type.
    refused(nats_url, run, lambda c: c.get("/runs", params={"status": "bogus"}), 400, "invalid_query")
    body = {"workflow": "one", "status": "bogus", "dry_run": True}
    refused(nats_url, run, lambda c: c.post("/runs/cancel", json=body), 400, "invalid_body")
