"""Reactive workflows, pure: definitions, registry validation, evaluation, decide and fold."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from reactive_support import ReviewRequest, ReviewResult, burst, order_chain, plan_review

from dagnats.domain.events import format_timestamp
from dagnats.domain.reactive.decide import Input, decide
from dagnats.domain.reactive.events import decode_reactive_record, encode_reactive_record
from dagnats.domain.reactive.fold import Execution, replay
from dagnats.reactive import (
    ExecutionState,
    ReactiveRegistry,
    ReactiveWorkflow,
    ReactiveWorkflowInvalid,
    Rule,
    RuleContext,
    TriggerMode,
    and_,
    has_message,
    iteration_less_than,
    matches_pattern,
    not_,
    or_,
    phase_in,
    phase_is,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> str:
    return format_timestamp(T0 + timedelta(seconds=seconds))


def apply(ex: Execution, events) -> Execution:
    # Through the wire encoding, as the engine stores them.
    return replay(decode_reactive_record(encode_reactive_record(events)), ex)


# ---- definitions and validation ---------------------------------------------------------


class S(ExecutionState, kw_only=True):
    pass


def test_registry_collects_every_problem_with_its_rule():
    wf = ReactiveWorkflow("bad", state_bucket="b", on_complete="a..b")
    wf.add_rule(Rule("r1").mutate(lambda c, r: None))
    wf.add_rule(Rule("r1").watch_kv("b", "x.>.y").mutate(lambda c, r: None))
    wf.add_rule(Rule("r2").on_subject("a b"))
    wf.add_rule(Rule("r3").on_subject("x").publish_async("out", lambda c: {}, "nope"))
    wf.add_rule(Rule("r4").on_subject("x").with_state_lookup("other", lambda m: "k").mutate(lambda c, r: None))
    wf.add_rule(Rule("r5").watch_kv("b", "a b").complete())
    wf.add_rule(Rule("r6").on_jetstream_subject("S", "x.>.y").complete())
    with pytest.raises(ReactiveWorkflowInvalid) as err:
        ReactiveRegistry().register(wf)
    text = str(err.value)
    assert "state type missing" in text
    assert "duplicate rule id 'r1'" in text
    assert "rule 'r1': no trigger" in text
    assert "'>' must be the last token" in text
    assert "rule 'r2': no action" in text
    assert "token 'a b' is not allowed" in text
    assert "result type 'nope' is not registered" in text
    assert "on_complete" in text
    assert "rule 'r4': with_state_lookup bucket 'other' is not the workflow's state_bucket 'b'" in text
    assert "rule 'r5': watch_kv: KV key pattern 'a b'" in text
    assert "rule 'r6': trigger: subject 'x.>.y'" in text
    assert isinstance(err.value, ValueError)
    assert err.value.workflow == "bad" and len(err.value.issues) == len(set(err.value.issues))


def test_a_valid_definition_registers_and_describes_itself():
    registry = ReactiveRegistry()
    wf = registry.register(plan_review(registry))
    assert registry.list() == ["plan-review"]
    described = wf.describe()
    assert [r["id"] for r in described["rules"]] == ["submit", "revise", "approve"]
    assert described["rules"][0]["action"] == "publish_async"
    msgspec.json.encode(described)  # plain data


def test_patterns_match_like_nats():
    assert matches_pattern("a.b.c", "a.*.c")
    assert matches_pattern("a.b.c", "a.>")
    assert not matches_pattern("a", "a.>")
    assert not matches_pattern("a.b", "a.*.c")
    assert matches_pattern("x", "x")


def test_condition_helpers_combine():
    ctx = RuleContext(state=S(phase="p", iteration=1), message=1)
    assert and_(phase_is("p"), has_message())(ctx)
    assert or_(phase_is("q"), iteration_less_than(2))(ctx)
    assert not not_(phase_in("p", "q"))(ctx)


# ---- evaluation order, limits ----------------------------------------------------------


def _two_rules():
    registry = ReactiveRegistry()
    wf = ReactiveWorkflow("two", state_type=S, state_bucket="s")
    wf.add_rule(Rule("first").on_subject("x").when("never", lambda c: False).mutate(lambda c, r: None))
    wf.add_rule(Rule("second").on_subject("x").when("yes", lambda c: True).mutate(_set_phase("a")))
    wf.add_rule(Rule("third").on_subject("x").when("yes", lambda c: True).mutate(_set_phase("b")))
    return registry.register(wf)


def _set_phase(phase):
    def mutate(ctx, _):
        ctx.state.phase = phase

    return mutate


def _trigger(wf, n: int, key: str = "k", source: str = "js:X") -> Input:
    return Input(
        id=f"t{n}", kind="trigger", key=key, mode=TriggerMode.MESSAGE_AND_STATE, info="x", source=source,
        position=n, rules=wf.rules, message={"n": n},
    )  # fmt: skip


def test_rules_are_evaluated_in_order_and_the_first_match_fires():
    wf = _two_rules()
    events = decide(wf, Execution("e1"), _trigger(wf, 1), at(0))
    assert [e.type for e in events] == ["reactive.created", "reactive.fired"]
    assert events[1].rule_id == "second"
    ex = apply(Execution("e1"), events)
    assert ex.state["phase"] == "a" and ex.state["timeline"][0]["rule_id"] == "second"
    assert ex.state["timeline"][0]["trigger_mode"] == "message+state"


def test_a_trigger_that_fires_nothing_records_nothing():
    registry = ReactiveRegistry()
    wf = ReactiveWorkflow("none", state_type=S, state_bucket="s")
    wf.add_rule(Rule("r").on_subject("x").when("never", lambda c: False).complete())
    registry.register(wf)
    assert decide(wf, Execution("e1"), _trigger(wf, 1), at(0)) == []


def test_cooldown_and_max_firings_against_a_fake_clock():
    registry = ReactiveRegistry()
    wf = registry.register(burst(registry, cooldown="10s", max_firings=3))
    ex = Execution("e1")
    fired_at = []
    for n in range(1, 101):
        now = at(n * 0.5)
        events = decide(wf, ex, _trigger(wf, n), now)
        if events:
            fired_at.append(n * 0.5)
        ex = apply(ex, events)
    assert fired_at == [0.5, 10.5, 20.5]
    assert ex.state["count"] == 3 and ex.firings["count"].count == 3


def test_an_input_already_seen_fires_nothing_again():
    wf = _two_rules()
    ex = apply(Execution("e1"), decide(wf, Execution("e1"), _trigger(wf, 5), at(0)))
    assert decide(wf, ex, _trigger(wf, 5), at(1)) == []
    assert decide(wf, ex, _trigger(wf, 4), at(1)) == []
    assert decide(wf, ex, _trigger(wf, 6), at(1))


# ---- plan review: async callbacks, escalation -------------------------------------------


def _submit(wf):
    return Input(
        id="js.1", kind="trigger", key="plan.p1", mode=TriggerMode.MESSAGE_AND_STATE, info="plans.requests",
        source="js:PLAN_REQUESTS", position=1, rules=wf.rules, message=ReviewRequest("p1", "do it"),
    )  # fmt: skip


def _callback(task_id, approved, n):
    result = ReviewResult(task_id=task_id, approved=approved, feedback=f"no {n}")
    return Input(id=f"cb.{task_id}", kind="callback", task_id=task_id, result=result, info="callback")


def test_plan_review_iterates_until_max_iterations_then_escalates():
    registry = ReactiveRegistry()
    wf = registry.register(plan_review(registry, max_iterations=2))
    ex = apply(Execution("e1"), decide(wf, Execution("e1"), _submit(wf), at(0)))
    assert ex.status == "waiting" and ex.pending is not None
    first = ex.pending.task_id
    events = decide(wf, ex, _callback(first, False, 1), at(1))
    assert [e.type for e in events] == ["reactive.callback", "reactive.fired"]  # revise, in the cascade
    assert events[1].outgoing[0].data["task_id"] != first
    ex = apply(ex, events)
    # A late duplicate of the first callback changes nothing.
    assert decide(wf, ex, _callback(first, True, 1), at(2)) == []
    events = decide(wf, ex, _callback(ex.pending.task_id, False, 2), at(3))
    assert [e.type for e in events] == ["reactive.callback", "reactive.ended"]
    ended = events[-1]
    assert ended.status == "escalated"
    assert ended.outgoing[0].subject == "plans.escalated"
    assert ended.outgoing[0].data["reason"] == "max iterations (2) reached"
    ex = apply(ex, events)
    assert ex.is_terminal and ex.state["iteration"] == 2


def test_plan_review_completes_on_approval_with_the_completion_event():
    registry = ReactiveRegistry()
    wf = registry.register(plan_review(registry))
    ex = apply(Execution("e1"), decide(wf, Execution("e1"), _submit(wf), at(0)))
    payload = decide(wf, Execution("e1"), _submit(wf), at(0))[1].outgoing[0].data
    assert payload["callback_subject"] == "reactive.inbox.e1" and payload["execution_id"] == "e1"
    events = decide(wf, ex, _callback(ex.pending.task_id, True, 1), at(1))
    assert [e.type for e in events] == ["reactive.callback", "reactive.fired", "reactive.ended"]
    assert events[-1].outgoing[0].subject == "plans.approved"
    assert events[-1].outgoing[0].data["final_phase"] == "approved"


def test_a_timeout_ends_a_stalled_execution():
    registry = ReactiveRegistry()
    wf = registry.register(plan_review(registry))
    ex = apply(Execution("e1"), decide(wf, Execution("e1"), _submit(wf), at(0)))
    assert ex.state["deadline"] == at(60)
    # The durable timer fired (the server's clock said so, a moment before the engine's): it times out.
    events = decide(wf, ex, Input(id="timeout", kind="timeout"), at(59.5))
    assert [e.type for e in events] == ["reactive.ended"] and events[-1].status == "timed_out"
    assert apply(ex, events).state["error"] == "timeout"
    # An input that arrives after the deadline, before the timer's, ends it as well.
    late = decide(wf, ex, _callback(ex.pending.task_id, True, 1), at(61))
    assert [e.type for e in late] == ["reactive.ended"] and late[-1].reason == "deadline passed"


def test_a_timer_for_an_execution_without_a_deadline_changes_nothing():
    registry = ReactiveRegistry()
    wf = ReactiveWorkflow("no-deadline", state_type=S, state_bucket="s")
    wf.add_rule(Rule("r").on_subject("x").when("yes", lambda c: True).mutate(_set_phase("a")))
    registry.register(wf)
    ex = apply(Execution("e1"), decide(wf, Execution("e1"), _trigger(wf, 1), at(0)))
    assert ex.state["deadline"] == ""
    assert decide(wf, ex, Input(id="timeout", kind="timeout"), at(3600)) == []


def test_an_exception_in_a_mutator_fails_the_execution():
    registry = ReactiveRegistry()
    wf = ReactiveWorkflow("boom", state_type=S, state_bucket="s", on_fail="f")
    wf.add_rule(Rule("r").on_subject("x").when("yes", lambda c: True).mutate(lambda c, r: 1 / 0))
    registry.register(wf)
    events = decide(wf, Execution("e1"), _trigger(wf, 1), at(0))
    assert events[-1].status == "failed" and "ZeroDivisionError" in events[-1].reason


# ---- KV chain: cascades on the engine's own state ---------------------------------------


def test_kv_writes_drive_an_order_through_three_phases():
    registry = ReactiveRegistry()
    wf = registry.register(order_chain(registry))
    ex = Execution("e1")
    for rev, stage in enumerate(["placed", "paid", "shipped"], start=1):
        inp = Input(
            id=f"kv.{rev}", kind="trigger", key="order.o1", mode=TriggerMode.STATE, info="order.o1",
            source="kv:orders", position=rev, rules=wf.rules[:3], message={"stage": stage, "amount": 5},
        )  # fmt: skip
        ex = apply(ex, decide(wf, ex, inp, at(rev)))
    assert ex.status == "completed"
    assert [t["rule_id"] for t in ex.state["timeline"]] == ["place", "pay", "ship", "finish"]
    assert [t["phase_after"] for t in ex.state["timeline"]] == ["placed", "paid", "shipped", "shipped"]


# ---- fold properties --------------------------------------------------------------------


@given(st.lists(st.sampled_from([True, False]), min_size=1, max_size=6), st.integers(0, 5))
def test_fold_is_deterministic_and_ignores_duplicated_records(approvals, dup_index):
    registry = ReactiveRegistry()
    wf = registry.register(plan_review(registry, max_iterations=4))
    ex = Execution("e1")
    records = [decide(wf, ex, _submit(wf), at(0))]
    ex = apply(ex, records[0])
    for n, approved in enumerate(approvals, start=1):
        if ex.pending is None:
            break
        events = decide(wf, ex, _callback(ex.pending.task_id, approved, n), at(n))
        records.append(events)
        ex = apply(ex, events)
    flat = [e for r in records for e in r]
    assert replay(flat, execution_id="e1") == ex
    dup = records[dup_index % len(records)]
    assert replay(flat + dup, execution_id="e1") == ex
