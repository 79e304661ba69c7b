"""The reactive engine's metrics, as the seed names them, on the engine's MeterProvider.

A ReactiveRuntime in this process on a real nats-server runs a plan review
(one rejection, then an approval) and a KV-driven order; the engine's
in-memory reader (``infra.metrics.setup_metrics``, the one OTLP exports from
too) shows the counters moved by exactly what the scenario did.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import nats
import reactive_support as s

from dagnats.domain.events import format_timestamp
from dagnats.infra import metrics as engine_metrics
from dagnats.infra.reactive.metrics import SCOPE
from dagnats.infra.reactive.runtime import ReactiveRuntime


def _points() -> dict[str, list[Any]]:
    """Every data point of the dagnats.reactive meter, by metric name."""
    data = engine_metrics.setup_metrics("test").reader.get_metrics_data()
    found: dict[str, list[Any]] = {}
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            if sm.scope.name == SCOPE:
                for metric in sm.metrics:
                    found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


def _sum(points: dict[str, list[Any]], name: str, **attrs: Any) -> float:
    def matches(p: Any) -> bool:
        return all(p.attributes.get(k) == v for k, v in attrs.items())

    return sum(getattr(p, "value", 0) or getattr(p, "count", 0) for p in points.get(name, []) if matches(p))


def _delta(before: dict, after: dict, name: str, **attrs: Any) -> float:
    return _sum(after, name, **attrs) - _sum(before, name, **attrs)


async def _until(predicate, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


REVIEW_SECONDS = 5


def test_reactive_metrics_move_with_a_plan_review_and_a_kv_chain(nats_url, run):
    before = _points()

    async def body():
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        registry = await s.plan_review_setup(js)
        registry.register(s.order_chain(registry))
        # The runtime's clock is the test's: each review takes 5 s of it, exactly.
        now = [datetime.now(UTC)]
        runtime = ReactiveRuntime(nc, registry, clock=lambda: format_timestamp(now[0]))
        reviews, approved, done = [], [], []

        async def reviewer(msg):
            request = json.loads(msg.data)
            reviews.append(request)
            now[0] += timedelta(seconds=REVIEW_SECONDS)
            answer = {"task_id": request["task_id"], "approved": len(reviews) > 1, "feedback": "more detail"}
            for _ in range(2):  # the copy is a duplicate callback: received, ignored
                await js.publish(request["callback_subject"], json.dumps(answer).encode())

        await nc.subscribe("plans.review", cb=reviewer)
        await nc.subscribe("plans.approved", cb=_collect(approved))
        await nc.subscribe("orders.done", cb=_collect(done))
        await runtime.start()
        try:
            await js.publish("plans.requests", json.dumps({"request_id": "m1", "plan": "p"}).encode())
            orders = await js.key_value("orders")
            for stage in ("placed", "paid", "shipped"):
                await orders.put("order.m1", json.dumps({"stage": stage, "amount": 2}).encode())
                await asyncio.sleep(0.2)
            await _until(lambda: approved and done, what="the approval and the order's completion")
            received = "reactive_callbacks_received_total"
            await _until(lambda: _delta(before, _points(), received, **plan) >= 4, what="the duplicate callbacks")
        finally:
            await runtime.stop()
            await nc.close()
        assert len(reviews) == 2

    plan, order = {"workflow_id": "plan-review"}, {"workflow_id": "order-chain"}
    run(body(), timeout=40)
    after = _points()

    assert _delta(before, after, "reactive_executions_created_total", **plan) == 1
    assert _delta(before, after, "reactive_executions_completed_total", **plan) == 1
    assert _delta(before, after, "reactive_executions_created_total", **order) == 1
    assert _delta(before, after, "reactive_executions_completed_total", **order) == 1
    for name in ("failed", "escalated", "timed_out"):
        assert _delta(before, after, f"reactive_executions_{name}_total") == 0, name
    # submit, revise (after the rejection), approve; place, pay, ship, finish
    firings = {
        (wf, rule): _delta(before, after, "reactive_rule_firings_total", workflow_id=wf, rule_id=rule)
        for wf, rule in [("plan-review", r) for r in ("submit", "revise", "approve")]
        + [("order-chain", r) for r in ("place", "pay", "ship", "finish")]
    }
    assert set(firings.values()) == {1}, firings
    assert _delta(before, after, "reactive_rule_firings_total") == 7
    assert _delta(before, after, "reactive_action_dispatches_total") == 7
    # every fired rule was evaluated, and rules that did not fire were evaluated too
    evaluations = "reactive_rule_evaluations_total"
    assert _delta(before, after, evaluations, fired=True) == 7
    assert _delta(before, after, evaluations, fired=False) > 0
    # in order, the first match fires: "place" fired on "placed", evaluated first (not fired) on
    # "paid" and "shipped"; "finish" (evaluated after each state change) fired once, on "shipped"
    assert _delta(before, after, evaluations, rule_id="place", fired=True) == 1
    assert _delta(before, after, evaluations, rule_id="place", fired=False) == 2
    assert _delta(before, after, evaluations, rule_id="finish", fired=True) == 1
    assert _delta(before, after, evaluations, rule_id="finish", fired=False) >= 2
    # two callbacks applied (the rejection, the approval), each 5 s of the clock; their copies ignored
    assert _delta(before, after, "reactive_callbacks_received_total", **plan, status="applied") == 2
    assert _delta(before, after, "reactive_callbacks_received_total", **plan, status="ignored") == 2
    # (histograms: counts and sums added by this test; another test of the same process may
    # have recorded the same workflow's before it)
    assert _recorded(before, after, "reactive_callback_latency_seconds", **plan) == (2, 10.0)
    # the plan review lasted two reviews: 10 s of the clock
    assert _recorded(before, after, "reactive_execution_duration_seconds", **plan, status="completed") == (1, 10.0)
    # one pending callback at a time, none left
    assert _delta(before, after, "reactive_pending_callbacks", **plan) == 0
    assert _sum(after, "reactive_pending_callbacks", **plan) == 0


def _recorded(before: dict, after: dict, name: str, **attrs: Any) -> tuple[int, float]:
    """How many values the histogram ``name`` with ``attrs`` took between the two readings,
    and their sum."""

    def totals(points: dict[str, list[Any]]) -> tuple[int, float]:
        chosen = [p for p in points.get(name, []) if all(p.attributes.get(k) == v for k, v in attrs.items())]
        return sum(p.count for p in chosen), sum(p.sum for p in chosen)

    (count_before, sum_before), (count_after, sum_after) = totals(before), totals(after)
    return count_after - count_before, round(sum_after - sum_before, 9)


def _collect(into: list):
    async def cb(msg) -> None:
        into.append(json.loads(msg.data))

    return cb
