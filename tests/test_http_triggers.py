"""Triggers: webhooks with HMAC signatures, cron without double fires or lost ones
across a restart, NATS subjects, and `dagnats trigger ...`."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from datetime import UTC, datetime, timedelta

import msgspec
from http_support import ONE_STEP, ApiHarness, assert_error

from dagnats.infra.triggers import TriggerService, TriggerStore, occurrence_run_id, start_with

from e2e_support import Cli

SECRET = "a-webhook-secret-of-some-length"


def sign(body: bytes) -> str:
    return "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


def test_a_signed_webhook_starts_a_run_and_a_bad_signature_stores_nothing(nats_url, run):
    async def body():
        async with ApiHarness(nats_url) as h:
            await h.http.post("/workflows", json=ONE_STEP)
            hook = {"id": "on-push", "workflow": "one", "webhook": {"path": "/hooks/push", "secret": SECRET}}
            created = await h.http.post("/triggers", json=hook)
            assert created.status_code == 201
            # The secret is stored, never shown again: every answer says only that it is set.
            answers = [
                created,
                await h.http.get("/triggers"),
                await h.http.get("/triggers/on-push"),
                await h.http.post("/triggers/on-push/enable"),
            ]
            assert all(SECRET not in a.text for a in answers)
            assert created.json()["webhook"]["secret"] == "(set)"
            assert answers[1].json()["triggers"][0]["webhook"]["secret"] == "(set)"
            payload = b'{"ref": "main"}'
            before = await h.stored()
            bad = await h.http.post("/hooks/push", content=payload, headers={"X-Signature-256": "sha256=00"})
            assert_error(bad, 401, "invalid_signature")
            assert_error(await h.http.post("/hooks/push", content=payload), 401)
            assert await h.stored() == before
            ok = await h.http.post("/hooks/push", content=payload, headers={"X-Signature-256": sign(payload)})
            assert ok.status_code == 202, ok.text
            run_view = (await h.http.get(f"/runs/{ok.json()['run_id']}")).json()
            assert run_view["input"]["trigger"] == "webhook" and run_view["input"]["data"] == {"ref": "main"}
            assert_error(await h.http.post("/hooks/nothing-here", content=b"{}"), 404)
            await h.http.post("/triggers/on-push/disable")
            disabled = await h.http.post("/hooks/push", content=payload, headers={"X-Signature-256": sign(payload)})
            assert_error(disabled, 409, "trigger_disabled")
            bad_def = {"id": "x", "workflow": "one", "webhook": {"path": "/elsewhere"}}
            assert_error(await h.http.post("/triggers", json=bad_def), 400)

    run(body())


def test_cron_fires_once_per_occurrence_across_engines_and_makes_up_a_missed_one(nats_url, run):
    async def body():
        async with ApiHarness(nats_url) as h:
            await h.http.post("/workflows", json=ONE_STEP)
            store = TriggerStore(h.nc.jetstream())
            created = datetime.now(UTC) - timedelta(hours=3)
            from dagnats.infra.triggers import Cron, Trigger

            await store.put(Trigger("every-min", "one", cron=Cron("* * * * *"), created_at=created.isoformat()))
            # Two engines tick at the same moment: one run for the occurrence.
            engines = [TriggerService(h.nc, start_with(h.engine.api)) for _ in range(2)]
            now = datetime.now(UTC).replace(second=30)
            await asyncio.gather(*(e.tick(now) for e in engines))
            due = now.replace(second=0, microsecond=0)
            runs = (await h.http.get("/runs", params={"workflow": "one"})).json()["runs"]
            await h.engine.wait_status(occurrence_run_id("every-min", due), "running")
            assert len((await h.http.get("/runs", params={"workflow": "one"})).json()["runs"]) == 1, runs
            # Restarted three minutes later: the latest missed occurrence is made up, once.
            later = now + timedelta(minutes=3)
            await engines[0].tick(later)
            await engines[1].tick(later)
            await h.engine.wait_status(occurrence_run_id("every-min", due + timedelta(minutes=3)), "running")
            assert len((await h.http.get("/runs", params={"workflow": "one"})).json()["runs"]) == 2
            for e in engines:
                await e.stop()

    run(body())


def test_a_message_on_a_subject_trigger_starts_a_run(nats_url, run):
    async def body():
        async with ApiHarness(nats_url) as h:
            await h.http.post("/workflows", json=ONE_STEP)
            sub = {"id": "orders", "workflow": "one", "subject": {"subject": "orders.new"}}
            assert (await h.http.post("/triggers", json=sub)).status_code == 201
            reserved = {"id": "bad", "workflow": "one", "subject": {"subject": "history.>"}}
            assert_error(await h.http.post("/triggers", json=reserved), 400)
            service = TriggerService(h.nc, start_with(h.engine.api))
            await service.tick(datetime.now(UTC))
            await h.nc.publish("orders.new", msgspec.json.encode({"order": 7}))
            for _ in range(100):
                runs = (await h.http.get("/runs", params={"workflow": "one"})).json()["runs"]
                if runs:
                    break
                await asyncio.sleep(0.05)
            view = (await h.http.get(f"/runs/{runs[0]['run_id']}")).json()
            assert view["input"]["data"] == {"subject": "orders.new", "body": {"order": 7}}
            await service.stop()

    run(body())


def test_trigger_cli_create_list_disable_enable_fire_delete(nats_url, run, tmp_path):
    cli = Cli(nats_url)

    async def body():
        async with ApiHarness(nats_url) as h:
            await h.http.post("/workflows", json=ONE_STEP)

            def c(*args, **kw):
                return asyncio.to_thread(cli, "trigger", *args, **kw)

            made = await c("create", "nightly", "one", "--cron", "0 3 * * *", "--timezone", "Europe/Paris", json=True)
            assert made["cron"] == {"expression": "0 3 * * *", "timezone": "Europe/Paris"}
            listed = await c("list")
            assert "nightly" in listed.stdout and "cron 0 3 * * * Europe/Paris" in listed.stdout
            assert (await c("disable", "nightly", json=True))["enabled"] is False
            assert (await c("enable", "nightly", json=True))["enabled"] is True
            fired = await c("fire", "nightly", '{"n": 1}', json=True)
            view = (await h.http.get(f"/runs/{fired['run_id']}")).json()
            assert view["input"]["trigger"] == "manual" and view["input"]["data"] == {"n": 1}
            bad = await c("create", "bad", "one", "--cron", "* * * * * *", check=False)
            assert bad.returncode != 0 and "5 fields" in bad.stderr
            assert (await c("delete", "nightly", json=True))["deleted"] is True
            assert "No triggers." in (await c("list")).stdout
            made = await c(
                "create", "api", "one", "--http", "/api/one", "--method", "put", "--timeout-ms", "500", json=True
            )
            assert made["http"]["method"] == "PUT" and made["http"]["timeout_ms"] == 500
            await c("create", "hook", "one", "--webhook", "/hooks/one", "--debounce", "30s", "--debounce-key", "repo")
            listed = (await c("list")).stdout
            assert "http PUT /api/one" in listed and "webhook /hooks/one (debounced 30s)" in listed
            signed = await c("create", "signed", "one", "--webhook", "/hooks/signed", "--secret", SECRET, json=True)
            assert signed["webhook"]["secret"] == "(set)"
            shown = [
                await c("list", json=True, raw=True),
                await c("list"),
                await c("disable", "signed", json=True, raw=True),
            ]
            assert all(SECRET not in r.stdout for r in shown)
            assert "webhook /hooks/signed (signed)" in shown[1].stdout
            stored = await TriggerStore(h.nc.jetstream()).get("signed")
            assert stored.webhook is not None and stored.webhook.secret == SECRET  # kept, to check signatures
            refused = await c("create", "x", "one", "--http", "/api/two", "--debounce", "1s", check=False)
            assert refused.returncode != 0 and "debounce: not allowed on http triggers" in refused.stderr
            taken = await c("create", "y", "one", "--http", "/api/one", "--method", "PUT", check=False)
            assert taken.returncode != 0 and "route conflict: PUT /api/one" in taken.stderr

    run(body(), timeout=60)
