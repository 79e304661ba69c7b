"""Debounced triggers on a real nats-server: bursts per key collapse into one run after the quiet
period (or the timeout), with two engines firing and across a restart. The clock is passed in."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from http_support import ApiHarness

from dagnats.infra.triggers import TriggerService, TriggerStore, start_with

DEBOUNCED = {
    "name": "orders",
    "steps": [{"id": "a", "task": "ta"}],
    "triggers": [
        {
            "id": "order-events",
            "subject": {"subject": "orders.changed"},
            "debounce": {"period": "10s", "timeout": "30s", "key": "order"},
        },
        {"id": "order-hook", "webhook": {"path": "/hooks/orders"}, "debounce": {"period": "1m"}},
    ],
}


def at(seconds: float, base: datetime = datetime(2030, 1, 1, tzinfo=UTC)) -> datetime:
    return base + timedelta(seconds=seconds)


async def runs_of(h: ApiHarness, workflow: str) -> list[dict]:
    return (await h.http.get("/runs", params={"workflow": workflow})).json()["runs"]


async def listed(h: ApiHarness, workflow: str, count: int, timeout: float = 10.0) -> list[dict]:
    """The workflow's runs once ``count`` are listed: a run is listed from its engine's live
    state, published once its first record's tasks are out, or its snapshot, a moment
    after ``run get`` can read it from the history."""
    deadline = asyncio.get_running_loop().time() + timeout
    while len(runs := await runs_of(h, workflow)) < count and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    return runs


def test_a_burst_per_key_becomes_one_run_after_its_quiet_period_with_two_engines_and_a_restart(nats_url, run):
    async def body():
        async with ApiHarness(nats_url) as h:
            assert (await h.http.post("/workflows", json=DEBOUNCED)).status_code == 201
            t = await TriggerStore(h.nc.jetstream()).get("order-events")
            engines = [TriggerService(h.nc, start_with(h.engine.api)) for _ in range(2)]
            await engines[0].fire(t, "subject", {"order": 1, "n": 1}, at=at(0))
            await engines[1].fire(t, "subject", {"order": 1, "n": 2}, at=at(5))
            await engines[0].fire(t, "subject", {"order": 2, "n": 1}, at=at(6))
            triggers = {t.id: t}
            assert await engines[0].debouncer.fire_due(triggers, at(14)) == []
            # Both engines find order 1's burst due at the same moment: one run.
            fired = await asyncio.gather(*(e.debouncer.fire_due(triggers, at(15)) for e in engines))
            first = {run_id for ids in fired for run_id in ids}
            assert len(first) == 1
            # An engine that starts afresh finds order 2's burst in the KV and fires it.
            restarted = TriggerService(h.nc, start_with(h.engine.api))
            second = await restarted.debouncer.fire_due(triggers, at(16))
            assert len(second) == 1 and second[0] not in first
            assert await restarted.debouncer.fire_due(triggers, at(100)) == []
            views = [await h.engine.wait_status(run_id, "running") for run_id in (*first, *second)]
            assert len(await listed(h, "orders", 2)) == 2
            inputs = {v["input"]["data"]["order"]: v["input"] for v in views}
            assert inputs[1]["data"] == {"order": 1, "n": 2} and inputs[1]["debounce"]["fires"] == 2
            assert inputs[2]["debounce"]["fires"] == 1 and inputs[1]["trigger"] == "subject"
            for e in (*engines, restarted):
                await e.stop()

    run(body())


def test_a_burst_that_never_goes_quiet_fires_at_its_timeout(nats_url, run):
    async def body():
        async with ApiHarness(nats_url) as h:
            await h.http.post("/workflows", json=DEBOUNCED)
            t = await TriggerStore(h.nc.jetstream()).get("order-events")
            service = TriggerService(h.nc, start_with(h.engine.api))
            fired: list[str] = []
            for second in range(0, 29, 7):  # a fire every 7 s: never 10 s of quiet
                fired += await service.debouncer.fire_due({t.id: t}, at(second))
                await service.fire(t, "subject", {"order": 3, "n": second}, at=at(second))
            assert fired == [] and await service.debouncer.fire_due({t.id: t}, at(29.9)) == []
            fired = await service.debouncer.fire_due({t.id: t}, at(30))  # 30 s after the first of its fires
            assert len(fired) == 1
            view = await h.engine.wait_status(fired[0], "running")
            assert view["input"]["data"]["n"] == 28 and view["input"]["debounce"]["fires"] == 5
            await service.stop()

    run(body())


def test_a_debounced_webhook_records_the_fire_and_starts_nothing_yet(nats_url, run):
    async def body():
        async with ApiHarness(nats_url) as h:
            await h.http.post("/workflows", json=DEBOUNCED)
            before = await h.stored()
            for n in range(3):
                answer = await h.http.post("/hooks/orders", json={"n": n})
                assert answer.status_code == 202 and answer.json() == {"trigger": "order-hook", "debounced": True}
            assert await h.stored() == before
            service = TriggerService(h.nc, start_with(h.engine.api))
            t = await TriggerStore(h.nc.jetstream()).get("order-hook")
            fired = await service.debouncer.fire_due({t.id: t}, datetime.now(UTC) + timedelta(minutes=2))
            assert len(fired) == 1
            view = await h.engine.wait_status(fired[0], "running")
            assert view["input"]["data"] == {"n": 2} and view["input"]["debounce"]["fires"] == 3
            await service.stop()

    run(body())
