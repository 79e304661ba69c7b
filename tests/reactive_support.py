"""Reactive workflows used by the reactive tests (domain and e2e)."""

from __future__ import annotations

import msgspec

from dagnats.reactive import (
    ExecutionState,
    ReactiveRegistry,
    ReactiveWorkflow,
    Rule,
    phase_is,
)


class ReviewRequest(msgspec.Struct):
    request_id: str
    plan: str


class ReviewResult(msgspec.Struct):
    task_id: str = ""
    approved: bool = False
    feedback: str = ""


class PlanState(ExecutionState, kw_only=True):
    plan: str = ""
    feedback: list[str] = msgspec.field(default_factory=list)


def _start(ctx, _result):
    ctx.state.plan = ctx.message.plan
    ctx.state.phase = "reviewing"


def _apply_review(ctx, result):
    if result.approved:
        ctx.state.phase = "approved"
    else:
        ctx.state.feedback.append(result.feedback)
        ctx.state.iteration += 1
        ctx.state.phase = "rejected"


def _plan(ctx):
    return {"plan": ctx.state.plan, "iteration": ctx.state.iteration}


def plan_review(registry: ReactiveRegistry, max_iterations: int = 3) -> ReactiveWorkflow:
    registry.register_result_type("review-result", ReviewResult)
    wf = ReactiveWorkflow(
        "plan-review",
        description="publish a plan for review until approved",
        state_type=PlanState,
        state_bucket="plan_reviews",
        max_iterations=max_iterations,
        timeout="60s",
        on_complete="plans.approved",
        on_escalate="plans.escalated",
    )
    wf.add_rule(
        Rule("submit")
        .on_jetstream_subject("PLAN_REQUESTS", "plans.requests", ReviewRequest)
        .with_state_lookup("plan_reviews", lambda m: f"plan.{m.request_id}")
        .when("new execution", phase_is(""))
        .publish_async("plans.review", _plan_with_start, "review-result", _apply_review)
    )
    wf.add_rule(
        Rule("revise")
        .watch_kv("plan_reviews", "plan.*")
        .when("rejected", phase_is("rejected"))
        .publish_async("plans.review", _plan, "review-result", _apply_review)
    )
    wf.add_rule(Rule("approve").watch_kv("plan_reviews", "plan.*").when("approved", phase_is("approved")).complete())
    return wf


def _plan_with_start(ctx):
    _start(ctx, None)
    return _plan(ctx)


class Order(ExecutionState, kw_only=True):
    amount: int = 0


def _stage(name):
    return lambda ctx: isinstance(ctx.message, dict) and ctx.message.get("stage") == name


def _to(phase):
    def mutate(ctx, _result):
        ctx.state.phase = phase
        if isinstance(ctx.message, dict):
            ctx.state.amount = ctx.message.get("amount", ctx.state.amount)

    return mutate


def order_chain(registry: ReactiveRegistry) -> ReactiveWorkflow:
    """Writes to the `orders` bucket drive an order through placed -> paid -> shipped -> done."""
    wf = ReactiveWorkflow(
        "order-chain", state_type=Order, state_bucket="order_states", on_complete="orders.done", timeout="60s"
    )
    wf.add_rule(Rule("place").watch_kv("orders", "order.*").when("placed", _stage("placed")).mutate(_to("placed")))
    wf.add_rule(
        Rule("pay")
        .watch_kv("orders", "order.*")
        .when("paid", _stage("paid"))
        .when("placed first", phase_is("placed"))
        .publish_with_mutation("orders.receipts", lambda ctx: {"amount": ctx.state.amount}, _to("paid"))
    )
    wf.add_rule(
        Rule("ship")
        .watch_kv("orders", "order.*")
        .when("shipped", _stage("shipped"))
        .when("paid first", phase_is("paid"))
        .mutate(_to("shipped"))
    )
    # Fires on the engine's own state change (a cascade), never on its KV write.
    wf.add_rule(Rule("finish").watch_kv("order_states", ">").when("shipped", phase_is("shipped")).complete())
    return wf


class Tick(msgspec.Struct):
    key: str
    n: int = 0


class Counter(ExecutionState, kw_only=True):
    count: int = 0


def _count(ctx, _result):
    ctx.state.count += 1
    ctx.state.phase = "counting"


def burst(registry: ReactiveRegistry, cooldown: object = 0, max_firings: int = 0, timeout: object = "60s"):
    wf = ReactiveWorkflow("burst", state_type=Counter, state_bucket="burst_states", timeout=timeout, on_fail="b.fail")
    rule = Rule("count").on_jetstream_subject("TICKS", "ticks.>", Tick).with_state_lookup("burst_states", _tick_key)
    rule.when("always", lambda ctx: True).mutate(_count)
    if cooldown:
        rule.with_cooldown(cooldown)
    if max_firings:
        rule.with_max_firings(max_firings)
    wf.add_rule(rule)
    return wf


def _tick_key(msg):
    return f"c.{msg.key}"


def plan_review_records() -> list[list]:
    """The golden reactive history (tests/histories/reactive-plan-review.*): a plan
    submitted, rejected once, then approved, at fixed times; one record per input."""
    from datetime import UTC, datetime, timedelta

    from dagnats.domain.events import format_timestamp
    from dagnats.domain.reactive.decide import Input, decide
    from dagnats.domain.reactive.fold import Execution, replay
    from dagnats.domain.reactive.state import TriggerMode

    def at(seconds: float) -> str:
        return format_timestamp(datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds))

    registry = ReactiveRegistry()
    wf = registry.register(plan_review(registry, max_iterations=3))
    ex = Execution("reactive-golden")
    submit = Input(
        id="js.1", kind="trigger", key="plan.p1", mode=TriggerMode.MESSAGE_AND_STATE, info="plans.requests",
        source="js:PLAN_REQUESTS", position=1, rules=wf.rules, message=ReviewRequest("p1", "ship it"),
    )  # fmt: skip
    records = [decide(wf, ex, submit, at(0))]
    ex = replay(records[-1], ex)
    for t, approved in ((1.0, False), (2.0, True)):
        task = ex.pending.task_id if ex.pending else ""
        result = ReviewResult(task_id=task, approved=approved, feedback="" if approved else "too vague")
        callback = Input(id=f"cb.{task}", kind="callback", task_id=task, result=result, info="callback")
        records.append(decide(wf, ex, callback, at(t)))
        ex = replay(records[-1], ex)
    return records


async def plan_review_setup(js, max_iterations: int = 3) -> ReactiveRegistry:
    """The plan-review workflow registered, with the stream its plan requests arrive on."""
    await js.add_stream(name="PLAN_REQUESTS", subjects=["plans.requests"])
    registry = ReactiveRegistry()
    registry.register(plan_review(registry, max_iterations=max_iterations))
    return registry
