"""Reactive rules, pure: every condition helper, every action, the context a rule sees,
the timeline it leaves, cooldown durations and the cascade bound (decide, no NATS)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dagnats.domain.events import format_timestamp
from dagnats.domain.reactive.decide import MAX_CASCADE, Input, decide
from dagnats.domain.reactive.events import decode_reactive_record, encode_reactive_record
from dagnats.domain.reactive.fold import Execution, replay
from dagnats.reactive import (
    ExecutionState,
    ExecutionStatus,
    ReactiveRegistry,
    ReactiveWorkflow,
    ReactiveWorkflowInvalid,
    Rule,
    RuleContext,
    TriggerMode,
    always,
    and_,
    has_error,
    has_message,
    has_state,
    is_waiting,
    iteration_equals,
    iteration_less_than,
    never,
    no_error,
    not_,
    not_waiting,
    or_,
    phase_in,
    phase_is,
    status_is,
)


def at(seconds: float) -> str:
    return format_timestamp(datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds))


class S(ExecutionState, kw_only=True):
    note: str = ""


def _ctx(message=None, **state) -> RuleContext:
    return RuleContext(state=S(**state), message=message)


def test_every_condition_helper():
    plain, waiting = _ctx(phase="p", iteration=2), _ctx(message={}, status=ExecutionStatus.WAITING, error="e")
    assert always()(plain) and not never()(plain)
    assert has_message()(waiting) and not has_message()(plain)
    assert has_state()(plain) and not has_state()(RuleContext())
    assert phase_is("p")(plain) and not phase_is("q")(plain)
    assert phase_in("q", "p")(plain) and not phase_in("q")(plain)
    assert status_is("waiting")(waiting) and status_is(ExecutionStatus.PENDING)(plain)
    assert iteration_less_than(3)(plain) and not iteration_less_than(2)(plain)
    assert iteration_equals(2)(plain) and not iteration_equals(1)(plain)
    assert has_error()(waiting) and not has_error()(plain)
    assert no_error()(plain) and not no_error()(waiting)
    assert is_waiting()(waiting) and not is_waiting()(plain)
    assert not_waiting()(plain) and not not_waiting()(waiting)
    assert and_(always(), phase_is("p"))(plain) and not and_(always(), never())(plain)
    assert or_(never(), phase_is("p"))(plain) and not or_(never(), never())(plain)
    assert not_(never())(plain) and not not_(always())(plain)


def _one(rule: Rule, **wf_args) -> ReactiveWorkflow:
    wf = ReactiveWorkflow("w", state_type=S, state_bucket="s", **wf_args).add_rule(rule)
    return ReactiveRegistry().register(wf)


def _fire(wf: ReactiveWorkflow, message=None, ex: Execution | None = None, n: int = 1):
    ex = ex or Execution("e1")
    inp = Input(
        id=f"t{n}", kind="trigger", key="k", mode=TriggerMode.MESSAGE, info="orders.new", source="js:S",
        position=n, rules=wf.rules, message=message, subject="orders.new",
    )  # fmt: skip
    events = decide(wf, ex, inp, at(n))
    return events, replay(decode_reactive_record(encode_reactive_record(events)), ex)


def _note(text: str):
    def mutate(ctx, _result):
        ctx.state.note, ctx.state.phase = text, text

    return mutate


def test_when_all_needs_every_condition_and_when_any_one():
    def rule(logic: str) -> Rule:
        r = Rule("r").on_jetstream_subject("S", "orders.>").when("a", phase_is("")).when("b", has_message())
        return (r.when_any() if logic == "any" else r.when_all()).mutate(_note("x"))

    assert _fire(_one(rule("all")), message=None)[0] == []
    assert _fire(_one(rule("all")), message={"x": 1})[0]
    assert _fire(_one(rule("any")), message=None)[0]


@pytest.mark.parametrize(
    ("build", "outgoing", "status", "note"),
    [
        (lambda r: r.publish("out.a", lambda c: {"n": c.message["n"]}), [("out.a", {"n": 7})], "running", ""),
        (lambda r: r.publish_with_mutation("out.a", lambda c: [1], _note("m")), [("out.a", [1])], "running", "m"),
        (lambda r: r.mutate(_note("m")), [], "running", "m"),
        (lambda r: r.complete(), [("w.done", None)], "completed", ""),
        (lambda r: r.complete_with_event("out.e", lambda c: {"e": 1}), [("out.e", {"e": 1}), ("w.done", None)],
         "completed", ""),
        (lambda r: r.complete_with_mutation(_note("c")), [("w.done", None)], "completed", "c"),
    ],
    ids=["publish", "publish_with_mutation", "mutate", "complete", "complete_with_event", "complete_with_mutation"],
)  # fmt: skip
def test_each_action(build, outgoing, status, note):
    wf = _one(build(Rule("r").on_jetstream_subject("S", "orders.>").when("always", always())), on_complete="w.done")
    events, ex = _fire(wf, message={"n": 7})
    sent = [(o.subject, o.data) for e in events for o in e.outgoing]
    assert [s for s, _ in sent] == [s for s, _ in outgoing]
    assert [d for (s, d) in sent if s != "w.done"] == [d for (s, d) in outgoing if s != "w.done"]
    assert ex.status == status and ex.state["note"] == note
    if status == "completed":  # the lifecycle event, typed (WorkflowCompletionEvent)
        done = next(d for s, d in sent if s == "w.done")
        assert done == {"execution_id": "e1", "workflow_id": "w", "status": "completed", "final_phase": note,
                        "completed_at": at(1)}  # fmt: skip
    # every message gets a Nats-Msg-Id derived from the record: a republished copy is dropped
    ids = [o.msg_id for e in events for o in e.outgoing]
    assert len(set(ids)) == len(ids) and all(i.startswith("e1/t1/") for i in ids)


def test_a_firing_leaves_its_timeline_entry_and_sees_its_context():
    seen = []

    def look(ctx):
        seen.append((ctx.key, ctx.subject, ctx.now, ctx.message))
        ctx.state.iteration += 1
        ctx.state.phase = "looked"

    wf = _one(Rule("look").on_jetstream_subject("S", "orders.>").when("always", always()).mutate(lambda c, r: look(c)))
    _, ex = _fire(wf, message={"n": 1})
    assert seen == [("k", "orders.new", at(1), {"n": 1})]
    assert ex.state["timeline"] == [
        {"timestamp": at(1), "rule_id": "look", "trigger_mode": "message", "trigger_info": "orders.new",
         "action": "mutate", "phase_after": "looked", "iteration": 1}
    ]  # fmt: skip
    assert ex.state["id"] == "e1" and ex.state["workflow_id"] == "w" and ex.state["created_at"] == at(1)


def test_a_kv_trigger_sees_the_key_and_revision():
    seen = []

    def saw(ctx) -> bool:
        seen.append((ctx.kv_key, ctx.kv_revision))
        return True

    wf = _one(Rule("r").watch_kv("orders", "order.*").when("k", saw).mutate(_note("x")))
    inp = Input(
        id="kv.orders.9", kind="trigger", key="order.1", mode=TriggerMode.STATE, info="order.1", source="kv:orders",
        position=9, rules=wf.rules, message={"stage": "placed"}, kv_key="order.1", kv_revision=9,
    )  # fmt: skip
    assert [e.type for e in decide(wf, Execution("e1"), inp, at(0))] == ["reactive.created", "reactive.fired"]
    assert seen == [("order.1", 9)]


COOLDOWNS = [("500ms", 500_000_000), (2, 2_000_000_000), (timedelta(seconds=1.5), 1_500_000_000)]


@pytest.mark.parametrize(("given", "ns"), COOLDOWNS)
def test_cooldowns_take_go_durations_seconds_or_timedeltas(given, ns):
    assert Rule("r").with_cooldown(given).cooldown_ns == ns


def test_a_bad_cooldown_or_max_firings_is_a_registry_error():
    rule = Rule("r").on_subject("x").with_cooldown("soon").with_max_firings(-1).complete()
    with pytest.raises(ReactiveWorkflowInvalid, match="cooldown: .*max firings must be a whole number"):
        _one(rule)


def test_rules_that_keep_firing_on_their_own_state_fail_the_execution():
    def bump(ctx, _):
        ctx.state.iteration += 1

    wf = ReactiveWorkflow("loop", state_type=S, state_bucket="s", on_fail="loop.failed")
    wf.add_rule(Rule("start").on_subject("go").when("always", always()).mutate(bump))
    wf.add_rule(Rule("again").watch_kv("s", ">").when("always", always()).mutate(bump))
    ReactiveRegistry().register(wf)
    events, ex = _fire(wf)
    assert ex.status == "failed" and ex.state["iteration"] == MAX_CASCADE + 1
    failed = events[-1].outgoing[0]
    assert failed.subject == "loop.failed" and set(failed.data) == {"execution_id", "workflow_id", "phase", "error",
                                                                  "failed_at"}  # fmt: skip
    assert "without settling" in failed.data["error"]
