"""Reactive workflows end to end: `dagnats reactive serve FILE.py` on a real nats-server,
killed with SIGKILL in the middle of each scenario and restarted; every execution
finishes exactly as it would have without the crash."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import nats

from dagnats.domain.events import format_timestamp
from dagnats.domain.reactive.decide import execution_id
from dagnats.domain.reactive.events import RuleFired
from dagnats.infra.reactive.store import load_execution

from e2e_support import CLI, Proc, base_env

TESTS = Path(__file__).resolve().parent

WORKFLOWS = """
import sys
sys.path.insert(0, {tests!r})
from dagnats.reactive import ReactiveRegistry
import reactive_support as s

registry = ReactiveRegistry()
registry.register(s.plan_review(registry, max_iterations=3))
registry.register(s.order_chain(registry))
registry.register(s.burst(registry, {burst}))
"""


def _reactive(tmp_path: Path, url: str, timeout: str = "60s", burst: str = "", clock: Path | None = None) -> Proc:
    """`dagnats reactive serve FILE.py`; given ``clock``, the same engine with its clock read from that file."""
    path = tmp_path / "workflows.py"
    burst = burst or f"max_firings=5, timeout={timeout!r}"
    path.write_text(WORKFLOWS.format(tests=str(TESTS), burst=burst))
    argv = [*CLI, "reactive", "serve", str(path)]
    if clock is not None:
        argv = [sys.executable, str(TESTS / "reactive_fake_clock.py"), str(path), str(clock)]
    return Proc("reactive", argv, base_env(url), ready_line="reactive engine ready")


def _set_clock(clock: Path, seconds: float) -> None:
    clock.write_text(format_timestamp(datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)))


def _kill9(proc: Proc) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.popen.wait(10)


async def _until(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def _execution(js, workflow: str, key: str):
    ex, _, _ = await load_execution(js, execution_id(workflow, key))
    return ex


async def _firings(js, workflow: str, key: str) -> list[str]:
    return [e.rule_id for e in await _fired(js, workflow, key)]


async def _fired(js, workflow: str, key: str) -> list[RuleFired]:
    from dagnats.domain.reactive.events import decode_reactive_record
    from dagnats.infra.wire.names import HISTORY_STREAM
    from dagnats.infra.wire.reading import stored_messages
    from dagnats.infra.wire.subjects import history_subject

    fired = []
    async for msg in stored_messages(js, HISTORY_STREAM, history_subject(execution_id(workflow, key))):
        fired += [e for e in decode_reactive_record(msg.data) if isinstance(e, RuleFired)]
    return fired


def test_plan_review_escalates_after_max_iterations_through_a_kill_9(nats_url, run, tmp_path):
    proc = _reactive(tmp_path, nats_url)

    async def body():
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        await _streams(js)
        reviews, escalations = [], []

        async def reviewer(msg):
            request = json.loads(msg.data)
            reviews.append(request)
            tasks = list(dict.fromkeys(r["task_id"] for r in reviews))  # a request may come twice
            answer = {"task_id": request["task_id"], "approved": False, "feedback": f"try {len(tasks)}"}
            for _ in range(2):  # the second copy is a duplicate: it changes nothing
                await js.publish(request["callback_subject"], json.dumps(answer).encode())
            # A late approval of an earlier task changes nothing either. (After the kill -9 a request
            # may come twice: recovery publishes the last record's messages again.)
            for earlier in set(tasks) - {request["task_id"]}:
                late = {"task_id": earlier, "approved": True, "feedback": "late"}
                await js.publish(request["callback_subject"], json.dumps(late).encode())

        await nc.subscribe("plans.review", cb=reviewer)
        await nc.subscribe("plans.escalated", cb=_collect(escalations))
        await asyncio.to_thread(proc.start)
        await js.publish("plans.requests", json.dumps({"request_id": "p1", "plan": "ship it"}).encode())
        await _until(lambda: _async(len({r["task_id"] for r in reviews}) >= 2), what="two reviews")
        _kill9(proc)
        await asyncio.to_thread(_restart, proc)
        await _until(lambda: _async(escalations), what="the escalation event")
        ex = await _execution(js, "plan-review", "plan.p1")
        assert ex.status == "escalated" and ex.state["iteration"] == 3
        assert ex.state["feedback"] == ["try 1", "try 2", "try 3"]  # no duplicate or late answer applied
        assert await _firings(js, "plan-review", "plan.p1") == ["submit", "revise", "revise"]
        assert escalations[0]["reason"] == "max iterations (3) reached"
        assert escalations[0]["execution_id"] == execution_id("plan-review", "plan.p1")
        assert len({r["task_id"] for r in reviews}) == 3  # one task per iteration
        # The execution ended before its timeout: its durable timer is gone.
        await _until(lambda: _no_timer(js, execution_id("plan-review", "plan.p1")), what="the timeout purged")
        await nc.close()

    try:
        run(body(), timeout=60)
    finally:
        proc.stop()


def test_kv_writes_drive_an_order_to_completion_through_a_kill_9(nats_url, run, tmp_path):
    proc = _reactive(tmp_path, nats_url)

    async def body():
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        await _streams(js)
        done, receipts = [], []
        await nc.subscribe("orders.done", cb=_collect(done))
        await nc.subscribe("orders.receipts", cb=_collect(receipts))
        await asyncio.to_thread(proc.start)
        orders = await js.key_value("orders")
        await orders.put("order.o1", json.dumps({"stage": "placed", "amount": 7}).encode())
        await _until(lambda: _phase(js, "placed"), what="phase placed")
        _kill9(proc)
        await orders.put("order.o1", json.dumps({"stage": "paid", "amount": 7}).encode())
        await asyncio.to_thread(_restart, proc)
        await _until(lambda: _phase(js, "paid"), what="phase paid")
        await orders.put("order.o1", json.dumps({"stage": "shipped"}).encode())
        await _until(lambda: _async(done), what="the completion event")
        ex = await _execution(js, "order-chain", "order.o1")
        assert ex.status == "completed"
        assert [t["rule_id"] for t in ex.state["timeline"]] == ["place", "pay", "ship", "finish"]
        assert done[0]["final_phase"] == "shipped" and receipts == [{"amount": 7}]
        # The engine's own KV writes to order_states never triggered a rule: one firing each.
        assert await _firings(js, "order-chain", "order.o1") == ["place", "pay", "ship", "finish"]
        await nc.close()

    try:
        run(body(), timeout=60)
    finally:
        proc.stop()


def test_max_firings_hold_under_a_burst_of_100_through_a_kill_9_and_a_timeout_ends_it(nats_url, run, tmp_path):
    proc = _reactive(tmp_path, nats_url, timeout="4s")

    async def body():
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        await _streams(js)
        failures = []
        await nc.subscribe("b.fail", cb=_collect(failures))
        await asyncio.to_thread(proc.start)
        for n in range(50):
            await js.publish("ticks.a", msgspec.json.encode({"key": "k1", "n": n}))
        _kill9(proc)
        for n in range(50, 100):
            await js.publish("ticks.a", msgspec.json.encode({"key": "k1", "n": n}))
        await asyncio.to_thread(_restart, proc)
        await _until(lambda: _async(failures), timeout=20, what="the timeout's failure event")
        ex = await _execution(js, "burst", "c.k1")
        assert ex.status == "timed_out" and ex.state["count"] == 5
        assert await _firings(js, "burst", "c.k1") == ["count"] * 5
        assert failures[0]["error"] in ("timeout", "deadline passed")
        await nc.close()

    try:
        run(body(), timeout=60)
    finally:
        proc.stop()


COOLDOWN = 30.0  # seconds of the engine's (fake) clock


def test_a_cooldown_holds_under_a_burst_of_100_through_a_kill_9(nats_url, run, tmp_path):
    # The engine's clock stands still while a burst of 100 ticks arrives, 50 before a
    # kill -9 and 50 while the engine is down: one firing. A second before the cooldown
    # ends, 10 more fire nothing; once it has ended, another burst of 100 fires exactly
    # once. The firing times come from the history, so the cooldown survives the crash.
    clock = tmp_path / "clock"
    _set_clock(clock, 0)
    proc = _reactive(tmp_path, nats_url, burst=f"cooldown={COOLDOWN!r}, timeout=0", clock=clock)

    async def ticks(js, first: int, count: int) -> None:
        for n in range(first, first + count):
            await js.publish("ticks.a", msgspec.json.encode({"key": "k1", "n": n}))

    async def drained(js) -> bool:
        info = await js.consumer_info("TICKS", "reactive-burst-count")
        return info.num_pending == 0 and info.num_ack_pending == 0 and info.delivered.stream_seq > 0

    async def positions(js) -> list[int]:
        return [e.position for e in await _fired(js, "burst", "c.k1")]

    async def body():
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        await _streams(js)
        await asyncio.to_thread(proc.start)
        await ticks(js, 0, 50)
        await _until(lambda: drained(js), what="the first 50 ticks handled")
        _kill9(proc)
        await ticks(js, 50, 50)
        await asyncio.to_thread(_restart, proc)
        await _until(lambda: drained(js), what="the other 50 ticks handled")
        assert await positions(js) == [1]  # the burst's first tick fired; the other 99 were in the cooldown

        _set_clock(clock, COOLDOWN - 1)
        await ticks(js, 100, 10)
        await _until(lambda: drained(js), what="ticks within the cooldown handled")
        assert await positions(js) == [1]

        _set_clock(clock, COOLDOWN)
        await ticks(js, 110, 100)
        await _until(lambda: drained(js), what="the second burst handled")
        assert await positions(js) == [1, 111]
        ex = await _execution(js, "burst", "c.k1")
        assert ex.state["count"] == 2 and ex.status == "running" and ex.state["deadline"] == ""
        await nc.close()

    try:
        run(body(), timeout=90)
    finally:
        proc.stop()


def test_reactive_list_shows_the_registered_workflows(nats_url, tmp_path):
    import subprocess

    proc = _reactive(tmp_path, nats_url)

    async def streams():
        nc = await nats.connect(nats_url)
        await _streams(nc.jetstream())
        await nc.close()

    asyncio.run(streams())
    proc.start()
    try:
        out = subprocess.run(
            [*CLI, "reactive", "list", "--json"], env=base_env(nats_url), capture_output=True, timeout=30, check=True
        )
        listed = {w["id"]: w for w in json.loads(out.stdout)}
        assert set(listed) == {"plan-review", "order-chain", "burst"}
        assert [r["id"] for r in listed["plan-review"]["rules"]] == ["submit", "revise", "approve"]
        assert listed["plan-review"]["rules"][0]["action"] == "publish_async"
        assert listed["burst"]["rules"][0]["trigger"] == "jetstream TICKS ticks.> + state burst_states"
        human = subprocess.run(
            [*CLI, "reactive", "list"], env=base_env(nats_url), capture_output=True, timeout=30, check=True
        ).stdout.decode()
        assert human.splitlines()[0].split() == ["WORKFLOW", "RULES", "STATE", "BUCKET", "DESCRIPTION"]
        assert "plan-review  3      plan_reviews" in human
    finally:
        proc.stop()


async def _streams(js) -> None:
    await js.add_stream(name="PLAN_REQUESTS", subjects=["plans.requests"])
    await js.add_stream(name="TICKS", subjects=["ticks.>"])


async def _phase(js, phase: str):
    kv = await js.key_value("order_states")
    try:
        entry = await kv.get("order.o1")
    except Exception:  # noqa: BLE001 - not written yet
        return False
    return json.loads(entry.value)["phase"] == phase


def _collect(into: list):
    async def cb(msg):
        into.append(json.loads(msg.data))

    return cb


async def _no_timer(js, exec_id: str) -> bool:
    from nats.js.errors import NotFoundError

    try:
        await js.get_last_msg("REACTIVE", f"reactive.schedule.{exec_id}")
    except NotFoundError:
        return True
    return False


async def _indexed(js, exec_id: str) -> bool:
    from dagnats.infra.reactive.views import execution_summaries

    return any(s["run_id"] == exec_id for s in await execution_summaries(js))


async def _async(value):
    return value


def _restart(proc: Proc) -> None:
    proc.ready.clear()
    proc.start()


def test_an_execution_shows_in_run_status_events_and_inspect(nats_url, run, tmp_path):
    from e2e_support import Cli, Serve

    proc = _reactive(tmp_path, nats_url)
    serve = Serve(nats_url, external=True)

    async def body():
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        await _streams(js)
        await asyncio.to_thread(proc.start)
        orders = await js.key_value("orders")
        for stage in ("placed", "paid", "shipped"):
            await orders.put("order.o1", json.dumps({"stage": stage, "amount": 3}).encode())
            await asyncio.sleep(0.2)
        await _until(lambda: _phase(js, "shipped"), what="phase shipped")
        await js.publish("ticks.a", msgspec.json.encode({"key": "k9", "n": 0}))  # a burst execution, left running
        await _until(lambda: _indexed(js, execution_id("burst", "c.k9")), what="the burst execution")
        await nc.close()

    try:
        run(body(), timeout=60)
        serve.start()
        cli, run_id = Cli(nats_url), execution_id("order-chain", "order.o1")
        status = cli("run", "status", run_id, json=True)
        assert status["kind"] == "reactive" and status["status"] == "completed"
        assert status["phase"] == "shipped" and status["iteration"] == 0
        assert [t["rule_id"] for t in status["timeline"]] == ["place", "pay", "ship", "finish"]
        events = cli("run", "events", run_id, json=True)
        types = [e["type"] for e in (events["events"] if isinstance(events, dict) else events)]
        assert types[0] == "reactive.created" and types[-1] == "reactive.ended"
        inspected = cli("run", "inspect", run_id, json=True)
        assert inspected["phase"] == "shipped"
        assert inspected["firings"] == {"place": 1, "pay": 1, "ship": 1, "finish": 1}
        assert inspected["timeline"] == status["timeline"] and inspected["state"]["amount"] == 3
        human = cli("run", "inspect", run_id).stdout
        assert "Phase:    shipped" in human and "finish" in human
        # run list: executions beside DAG runs, with their phase and iteration, filtered like runs.
        listed = {r["run_id"]: r for r in cli("run", "list", json=True)}
        burst_id = execution_id("burst", "c.k9")
        assert {run_id, burst_id} <= set(listed)
        order = listed[run_id]
        assert order["kind"] == "reactive" and order["workflow"] == "order-chain" and order["status"] == "completed"
        assert order["phase"] == "shipped" and order["iteration"] == 0 and order["steps_done"] == 4
        assert order["created_at"] and order["completed_at"]
        assert listed[burst_id]["status"] == "running" and listed[burst_id]["completed_at"] is None
        assert [r["run_id"] for r in cli("run", "list", "--status", "completed", json=True)] == [run_id]
        assert [r["run_id"] for r in cli("run", "list", "--workflow", "burst", json=True)] == [burst_id]
        table = cli("run", "list").stdout
        assert run_id in table and "phase shipped, iteration 0, 4 fired" in table
    finally:
        serve.stop()
        proc.stop()
