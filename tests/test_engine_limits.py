"""Flow control through the engine on a real nats-server: concurrency slots, rate
windows, queued runs in priority order, step singletons; workers driven by hand."""

from __future__ import annotations

import asyncio

from harness import EngineHarness, FakeWorker


def _wf(name: str, **step_fields) -> dict:
    return {"name": name, "steps": [{"id": "work", "task": name, **step_fields}]}


async def _queued(h: EngineHarness, run_id: str) -> dict:
    """The run once its engine recorded it queued (pending, with the limit it waits for)."""
    for _ in range(500):
        status = await h.client.status(run_id)
        if status["status"] == "pending" and status.get("waiting"):
            return status
        await asyncio.sleep(0.02)
    raise AssertionError(f"run {run_id} was never queued: {status}")


async def _take(worker: FakeWorker, count: int, timeout: float = 3.0) -> list:
    taken = []
    for _ in range(count):
        try:
            taken.append(await worker.next(timeout))
        except TimeoutError:
            break
    return taken


async def _finish(worker: FakeWorker, taken: list) -> None:
    for task, msg in taken:
        await worker.report(task, "step.started")
        await worker.report(task, "step.completed", "ok")
        await msg.ack()


def test_max_task_concurrency_holds_the_rest_until_a_slot_frees(nats_url, run):
    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(_wf("capped", max_task_concurrency=2))
            run_ids = [await h.client.start("capped", {"n": i}) for i in range(5)]
            worker = FakeWorker(h.nc, "capped")
            first = await _take(worker, 5, timeout=2.0)
            waiting = [await h.client.inspect(r) for r in run_ids]
            await _finish(worker, first)
            second = await _take(worker, 5, timeout=3.0)
            await _finish(worker, second)
            third = await _take(worker, 5, timeout=3.0)
            await _finish(worker, third)
            finals = [await h.client.wait(r, timeout=10) for r in run_ids]
            return first, second, third, waiting, finals

    first, second, third, waiting, finals = run(body())
    assert (len(first), len(second), len(third)) == (2, 2, 1)
    held = [w for w in waiting if w["steps"]["work"]["status"] == "waiting"]
    assert len(held) == 3
    assert all(w["steps"]["work"]["waiting"]["kind"] == "limit" for w in held)
    assert all("max_task_concurrency 2 of task capped" in w["steps"]["work"]["waiting"]["description"] for w in held)
    assert [f["status"] for f in finals] == ["completed"] * 5


def _ms(stamp: str) -> float:
    from dagnats.domain.events import parse_timestamp

    return parse_timestamp(stamp).timestamp() * 1000


def test_a_rate_limit_never_queues_more_than_its_limit_in_any_period(nats_url, run):
    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(_wf("paced", rate_limit={"limit": 2, "period": "1s"}))
            run_ids = list(await asyncio.gather(*(h.client.start("paced", {"n": i}) for i in range(6))))
            worker = FakeWorker(h.nc, "paced")
            first = await _take(worker, 6, timeout=0.5)
            views = [await h.client.inspect(r) for r in run_ids]
            held = next(v for v in views if v["steps"]["work"]["status"] == "waiting")
            await _finish(worker, first)
            rest = []
            while len(first) + len(rest) < 6:
                more = await _take(worker, 1, timeout=5.0)
                assert more, "a rate-limited step was never dispatched"
                await _finish(worker, more)
                rest += more
            finals = [await h.client.wait(r, timeout=10) for r in run_ids]
            histories = [await h.client.events(r) for r in run_ids]
            return first, held, finals, histories

    first, held, finals, histories = run(body())
    assert 2 <= len(first) < 6  # (more than 2 only if the starts took longer than a period)
    waiting = held["steps"]["work"]
    assert waiting["status"] == "waiting" and "rate_limit of task paced (2 per 1000 ms)" in waiting["waiting"]["for"]
    # The instants the window counted the steps at (a run records its dispatch a little later).
    counted = sorted(
        _ms(e["payload"]["rate_at"]) for events in histories for e in events if e["type"] == "step.admitted"
    )
    assert len(counted) == 6
    for i in range(len(counted) - 2):  # any three admissions span at least one period
        assert counted[i + 2] - counted[i] >= 1000, counted
    assert all(f["status"] == "completed" for f in finals)


def test_a_keyed_rate_limit_keeps_one_bucket_per_key_and_a_missing_key_fails_the_step(nats_url, run):
    async def body():
        async with EngineHarness(nats_url) as h:
            limit = {"key": "customer.id", "limit": 1, "period": "1h", "units": 1}
            await h.client.register(_wf("per-customer", keyed_rate_limit=limit))
            a1 = await h.client.start("per-customer", {"customer": {"id": "a"}})
            b1 = await h.client.start("per-customer", {"customer": {"id": "b"}})
            a2 = await h.client.start("per-customer", {"customer": {"id": "a"}})
            missing = await h.client.start("per-customer", {"customer": {}})
            worker = FakeWorker(h.nc, "per-customer")
            taken = await _take(worker, 4, timeout=1.5)
            await _finish(worker, taken)
            done = [await h.client.wait(r, timeout=10) for r in (a1, b1)]
            failed = await h.client.wait(missing, timeout=10)
            held = await h.wait_step(a2, "work", "waiting")
            listed = await h.client.limits("rate.per-customer")
            return taken, done, failed, held, listed

    taken, done, failed, held, listed = run(body())
    assert sorted(t.input["customer"]["id"] for t, _ in taken) == ["a", "b"]
    assert [d["status"] for d in done] == ["completed", "completed"]
    assert failed["status"] == "failed"
    assert "keyed_rate_limit: the step's input has no 'customer.id'" in failed["steps"]["work"]["error"]
    assert "for customer.id=a" in held["steps"]["work"]["waiting"]["for"]
    assert len(listed) == 2
    busy = [item for item in listed if item["queued"]]
    assert len(busy) == 1 and busy[0]["queue"][0]["run_id"] == held["run_id"]
    assert busy[0]["in_use"] == 1 and busy[0]["limit"] == 1 and busy[0]["next_free_at"]


def _priority_wf(max_runs: int) -> dict:
    return {
        "name": "ranked",
        "concurrency": {"max_runs": max_runs},
        "priority": {"key": "tier", "rules": {"gold": 600, "silver": 300}, "default_offset": 0},
        "steps": [{"id": "work", "task": "ranked"}],
    }


def test_queued_runs_start_in_priority_order_and_a_cancelled_one_leaves_the_queue(nats_url, run):
    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(_priority_wf(1))
            blocker = await h.client.start("ranked", {"tier": "none", "n": 0})
            await h.wait_status(blocker, "running")
            tiers = ["bronze", "silver", "gold", "bronze", "gold", "silver"]
            queued = [await h.client.start("ranked", {"tier": t, "n": i + 1}) for i, t in enumerate(tiers)]
            pending = [await _queued(h, run_id) for run_id in queued][0]
            before = await h.client.limits("runs.ranked")
            cancelled = await h.client.cancel(queued[3])
            after = await h.client.limits("runs.ranked")
            worker = FakeWorker(h.nc, "ranked")
            order = []
            for _ in range(len(queued)):
                task, msg = await worker.next(timeout=10)
                order.append(task.input["n"])
                await _finish(worker, [(task, msg)])
            finals = [await h.client.wait(r, timeout=10) for r in [blocker, *queued]]
            return pending, before, cancelled, after, order, finals

    pending, before, cancelled, after, order, finals = run(body())
    assert (
        pending["waiting"]["kind"] == "limit"
        and "concurrency.max_runs 1 of workflow ranked" in pending["waiting"]["for"]
    )
    assert before[0]["in_use"] == 1 and before[0]["queued"] == 6
    assert cancelled["status"] == "cancelled"
    assert after[0]["queued"] == 5 and all(w["run_id"] != cancelled["run_id"] for w in after[0]["queue"])
    # the blocker first, then gold (created earlier first), silver, and the rest by creation
    assert order == [0, 3, 5, 2, 6, 1]
    assert [f["status"] for f in finals] == ["completed"] * 4 + ["cancelled"] + ["completed"] * 2


def test_a_backlog_of_a_hundred_runs_drains_in_priority_order(nats_url, run):
    tiers = ["gold", "silver", "none", "none", "silver"] * 20

    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(_priority_wf(1))
            blocker = await h.client.start("ranked", {"tier": "none", "n": -1})
            await h.wait_status(blocker, "running")
            queued = [await h.client.start("ranked", {"tier": t, "n": i}) for i, t in enumerate(tiers)]
            for run_id in queued:
                await _queued(h, run_id)
            worker = FakeWorker(h.nc, "ranked")
            order = []
            for _ in range(len(queued) + 1):
                task, msg = await worker.next(timeout=10)
                order.append(task.input["n"])
                await _finish(worker, [(task, msg)])
            return order

    order = run(body())
    # Rank = created_at - offset: the offsets (10 and 5 minutes) dwarf the seconds the
    # starts took, so every gold run goes before every silver run, each tier by creation.
    by_tier = {t: [i for i, x in enumerate(tiers) if x == t] for t in ("gold", "silver", "none")}
    assert order == [-1, *by_tier["gold"], *by_tier["silver"], *by_tier["none"]]


def test_a_queued_run_survives_an_engine_restart(nats_url, run):
    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(_priority_wf(1))
            blocker = await h.client.start("ranked", {"n": 0})
            await h.wait_status(blocker, "running")
            queued = await h.client.start("ranked", {"n": 1})
            await _queued(h, queued)
        async with EngineHarness(nats_url) as h:
            still = await h.client.status(queued)
            worker = FakeWorker(h.nc, "ranked")
            order = []
            for _ in range(2):
                task, msg = await worker.next(timeout=10)
                order.append(task.input["n"])
                await _finish(worker, [(task, msg)])
            finals = [await h.client.wait(r, timeout=10) for r in (blocker, queued)]
            return still, order, finals

    still, order, finals = run(body())
    assert still["status"] == "pending"
    assert order == [0, 1]
    assert [f["status"] for f in finals] == ["completed", "completed"]


def test_a_step_singleton_runs_one_at_a_time_across_runs(nats_url, run):
    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(_wf("lonely", singleton=True))
            run_ids = [await h.client.start("lonely", {"n": i}) for i in range(3)]
            worker = FakeWorker(h.nc, "lonely")
            batches = []
            for _ in range(3):
                taken = await _take(worker, 3, timeout=1.5)
                batches.append(len(taken))
                await _finish(worker, taken)
            finals = [await h.client.wait(r, timeout=10) for r in run_ids]
            return batches, finals

    batches, finals = run(body())
    assert batches == [1, 1, 1]
    assert [f["status"] for f in finals] == ["completed"] * 3


def test_max_steps_caps_the_steps_of_one_run_in_flight(nats_url, run):
    async def body():
        async with EngineHarness(nats_url) as h:
            steps = [{"id": f"s{i}", "task": "fan"} for i in range(5)]
            await h.client.register({"name": "fan", "concurrency": {"max_steps": 2}, "steps": steps})
            run_id = await h.client.start("fan")
            worker = FakeWorker(h.nc, "fan")
            batches = []
            while sum(batches) < 5:
                taken = await _take(worker, 5, timeout=1.5)
                assert taken, "no step was dispatched"
                batches.append(len(taken))
                await _finish(worker, taken)
            return batches, await h.client.wait(run_id, timeout=10)

    batches, final = run(body())
    assert max(batches) == 2 and sum(batches) == 5
    assert final["status"] == "completed"


def test_a_failed_attempt_frees_its_slot_and_its_retry_queues_again(nats_url, run):
    async def body():
        async with EngineHarness(nats_url) as h:
            retry = {"max_attempts": 1, "initial_delay": "100ms"}
            await h.client.register(_wf("flaky", max_task_concurrency=1, retry=retry))
            first, second = await h.client.start("flaky", {"n": 1}), await h.client.start("flaky", {"n": 2})
            worker = FakeWorker(h.nc, "flaky")
            failed = await worker.fail()
            seen = [failed.input["n"]]
            for _ in range(2):
                task, msg = await worker.next(timeout=5)
                seen.append((task.input["n"], task.attempt))
                await _finish(worker, [(task, msg)])
            finals = [await h.client.wait(r, timeout=10) for r in (first, second)]
            listed = await h.client.limits("task.flaky")
            return seen, finals, listed

    seen, finals, listed = run(body())
    # Either run may take the slot first; its retry then queues behind the other.
    other = 3 - seen[0]
    assert sorted(seen[1:]) == sorted([(seen[0], 2), (other, 1)])
    assert [f["status"] for f in finals] == ["completed", "completed"]
    assert listed[0]["in_use"] == 0 and listed[0]["queued"] == 0


def test_a_listing_of_more_limits_than_one_reply_holds_comes_page_by_page(nats_url, run):
    """10,000 keys made the answer 2.1 MB (bench/limits.py): it is paged under the reply limit."""
    import msgspec

    from dagnats.domain.limits import RateWindow
    from dagnats.infra.wire.names import FLOW_BUCKET

    count = 2500
    window = RateWindow(limit=5, period_ms=1000, about="rate_limit of task " + "t" * 400)

    async def body():
        async with EngineHarness(nats_url) as h:
            kv = await h.nc.jetstream().key_value(FLOW_BUCKET)
            data = msgspec.json.encode(window)
            await asyncio.gather(*(kv.put(f"rate.t-{n:05d}", data) for n in range(count)))
            first = await h.client.request("limits", {"prefix": "rate.t-", "queue": 1})
            return first, await h.client.limits("rate.t-", queue=1), h.nc.max_payload

    first, listed, max_payload = run(body(), timeout=120)
    assert first["next"] is not None and 0 < len(first["limits"]) < count  # more than one reply holds
    assert len(msgspec.json.encode(first)) <= max_payload
    assert [item["key"] for item in listed] == [f"rate.t-{n:05d}" for n in range(count)]
