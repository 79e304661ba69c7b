"""Record the golden histories: ``python tests/histories/record.py``.

Each scenario feeds fixed facts, at fixed times, through ``decide.evolve``
and writes ``<name>.history.json`` (every event as the run's history holds
it: each fact followed by the decisions it caused) and
``<name>.expected.json`` (the state that history folds to). The files are
fixtures: regenerate them only on purpose, read the diff, and commit it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import msgspec

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from dagnats.domain import events as ev  # noqa: E402
from dagnats.domain import state as rs  # noqa: E402
from dagnats.domain.actions import PublishFact, StartTimer  # noqa: E402
from dagnats.domain.definition import decode_workflow  # noqa: E402
from dagnats.domain.kinds.children import child_run_id  # noqa: E402
from dagnats.domain.timers import LOOP_DELAY, RETRY, SLEEP  # noqa: E402
from dagnats.domain.validate import validate  # noqa: E402

from strategies import (  # noqa: E402
    RUN_ID,
    Recorder,
    at,
    completed,
    failed,
    started_event,
    timer_fired,
    worker_fact,
)


def definition(doc: dict) -> object:
    return validate(decode_workflow(json.dumps(doc)))


def started(step_id: str, attempt: int, t: float) -> ev.Event:
    return worker_fact(ev.STEP_STARTED, step_id, attempt, None, at(t))


def hello_pipeline() -> Recorder:
    """The tutorial run: greet -> uppercase -> reverse on "World"."""
    wf = definition(
        {
            "name": "hello-pipeline",
            "version": "1.0",
            "steps": [
                {"id": "greet", "task": "greet"},
                {"id": "uppercase", "task": "uppercase", "depends_on": ["greet"]},
                {"id": "reverse", "task": "reverse", "depends_on": ["uppercase"]},
            ],
        }
    )
    rec = Recorder()
    rec.feed(started_event(wf, "World"), at(0))
    for t, (step, output) in enumerate(
        [("greet", "Hello, World!"), ("uppercase", "HELLO, WORLD!"), ("reverse", "!DLROW ,OLLEH")]
    ):
        rec.feed(started(step, 1, 2 * t + 1), at(2 * t + 1))
        rec.feed(completed(step, 1, output, at(2 * t + 2)), at(2 * t + 2))
    return rec


def retry_then_success() -> Recorder:
    """fetch fails once, is retried after its backoff, succeeds; a re-sent completion is ignored."""
    wf = definition(
        {
            "name": "flaky-fetch",
            "steps": [
                {
                    "id": "fetch",
                    "task": "fetch",
                    "timeout": "30s",
                    "retry": {
                        "max_attempts": 3,
                        "strategy": "exponential",
                        "initial_delay": "2s",
                        "max_delay": "30s",
                        "multiplier": 2.0,
                    },
                },
                {"id": "store", "task": "store", "depends_on": ["fetch"]},
            ],
        }
    )
    rec = Recorder()
    rec.feed(started_event(wf, {"url": "https://example.com/data"}), at(0))
    rec.feed(started("fetch", 1, 1), at(1))
    rec.feed(failed("fetch", 1, "connection reset", moment=at(2)), at(2))
    (retry,) = [t for t in rec.timers if t.kind == "retry"]
    rec.feed(timer_fired(retry, at(4)), at(4))
    rec.feed(started("fetch", 2, 5), at(5))
    rec.feed(completed("fetch", 2, {"bytes": 512}, at(6)), at(6))
    rec.feed(completed("fetch", 2, {"bytes": 512}, at(7)), at(7))  # re-sent by the worker
    rec.feed(started("store", 1, 8), at(8))
    rec.feed(completed("store", 1, {"stored": True}, at(9)), at(9))
    return rec


def exhausted_retries() -> Recorder:
    """charge fails on every one of its 1 + 2 attempts; the run fails."""
    wf = definition(
        {
            "name": "always-declined",
            "steps": [
                {
                    "id": "charge",
                    "task": "charge",
                    "retry": {"max_attempts": 2, "strategy": "fixed", "initial_delay": "1s"},
                },
                {"id": "ship", "task": "ship", "depends_on": ["charge"]},
            ],
        }
    )
    rec = Recorder()
    rec.feed(started_event(wf, {"amount": 42}), at(0))
    t = 1
    for attempt in (1, 2, 3):
        rec.feed(started("charge", attempt, t), at(t))
        rec.feed(failed("charge", attempt, "card declined", moment=at(t + 1)), at(t + 1))
        timers = [x for x in rec.timers if isinstance(x, StartTimer) and x.attempt == attempt]
        if timers:
            rec.feed(timer_fired(timers[0], at(t + 2)), at(t + 2))
        t += 3
    return rec


# ---- the step types the engine runs itself, or that grow the run ------------------------------------


def fire(rec: Recorder, kind: str, t: float, instance: int | None = None) -> None:
    """The latest timer of ``kind`` (for ``instance``, if given) fires at ``t``."""
    due = [x for x in rec.timers if x.kind == kind and (instance is None or x.instance == instance)][-1]
    rec.feed(timer_fired(due, at(t)), at(t))


def run_step(rec: Recorder, step_id: str, attempt: int, output: object, t: float) -> None:
    """A worker starts the attempt at ``t`` and completes it one second later."""
    rec.feed(started(step_id, attempt, t), at(t))
    rec.feed(completed(step_id, attempt, output, at(t + 1)), at(t + 1))


def sleep_then_remind() -> Recorder:
    """A sleep of 90 s holds the reminder; its timer fires, the reminder is sent."""
    wf = definition(
        {
            "name": "nap-then-remind",
            "steps": [
                {"id": "nap", "type": "sleep", "config": {"duration": "1m30s"}},
                {"id": "remind", "task": "remind", "depends_on": ["nap"]},
            ],
        }
    )
    rec = Recorder()
    rec.feed(started_event(wf, {"who": "ann"}), at(0))
    fire(rec, SLEEP, 90)
    run_step(rec, "remind", 1, {"sent": True}, 91)
    return rec


def approval_granted() -> Recorder:
    """build, then an approval requested and granted 5 minutes later, then deploy."""
    wf = definition(
        {
            "name": "approved-deploy",
            "steps": [
                {"id": "build", "task": "build"},
                {
                    "id": "ok",
                    "type": "approval",
                    "depends_on": ["build"],
                    "config": {"subject": "approvals.deploy", "timeout": "1h", "description": "deploy v3?"},
                },
                {"id": "deploy", "task": "deploy", "depends_on": ["ok"]},
            ],
        }
    )
    rec = Recorder()
    start = started_event(wf, {"version": 3})
    rec.feed(start, at(0))
    run_step(rec, "build", 1, {"image": "app:3"}, 1)
    granted = ev.ApprovalGranted(  # as `dagnats run approve` puts it in the inbox
        run_id=RUN_ID,
        step_id="ok",
        attempt=1,
        timestamp=ev.format_timestamp(at(302)),
        trace_parent=start.trace_parent,
        payload=ev.ApprovalDecision(comment="go ahead", by="ann"),
        id="ok.1.approval",
    )
    rec.feed(granted, at(302))
    run_step(rec, "deploy", 1, {"deployed": "app:3"}, 303)
    return rec


def wait_for_payment() -> Recorder:
    """A wait for the "paid" event of this order; a matching event arrives, then ship."""
    wf = definition(
        {
            "name": "pay-then-ship",
            "steps": [
                {
                    "id": "pay",
                    "type": "wait_for_event",
                    "config": {
                        "event": "paid",
                        "match": {"left": "order", "op": "eq", "right": "input.order"},
                        "timeout": "10m",
                    },
                },
                {"id": "ship", "task": "ship", "depends_on": ["pay"]},
            ],
        }
    )
    rec = Recorder()
    rec.feed(started_event(wf, {"order": 42}), at(0))
    matched = ev.StepWaitMatched(  # as the correlator reports a match
        run_id=RUN_ID,
        step_id="pay",
        attempt=1,
        timestamp=ev.format_timestamp(at(40)),
        payload=ev.EventMatch(data={"order": 42, "amount": 1999}, seq=7),
        id=ev.fact_id(ev.STEP_WAIT_MATCHED, "pay", 1),
    )
    rec.feed(matched, at(40))
    run_step(rec, "ship", 1, {"tracking": "Z123"}, 41)
    return rec


CHILD_RUN_ID = child_run_id(RUN_ID, "invoice", 1)


def sub_workflow_child() -> tuple[Recorder, PublishFact]:
    """The child run a sub_workflow step started: one step, then it tells its parent."""
    child_def = definition({"name": "make-invoice", "steps": [{"id": "render", "task": "render"}]})
    start = ev.WorkflowStarted(
        run_id=CHILD_RUN_ID,
        timestamp=ev.format_timestamp(at(1)),
        id=ev.WORKFLOW_STARTED,
        trace_parent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        payload=ev.RunStart(
            workflow_def=child_def,  # type: ignore[arg-type]
            input={"order": 42},
            parent_run_id=RUN_ID,
            parent_step_id="invoice",
            parent_attempt=1,
            root_run_id=RUN_ID,
            depth=1,
        ),
    )
    rec = Recorder(run=rs.new_run(CHILD_RUN_ID))
    rec.feed(start, at(1))
    rec.feed(worker_fact(ev.STEP_STARTED, "render", 1, None, at(2), run_id=CHILD_RUN_ID), at(2))
    output = {"pdf": "inv-42.pdf"}
    actions = rec.feed(worker_fact(ev.STEP_COMPLETED, "render", 1, output, at(3), run_id=CHILD_RUN_ID), at(3))
    (told,) = [a for a in actions if isinstance(a, PublishFact)]
    return rec, told


def sub_workflow_parent() -> Recorder:
    """A sub_workflow step starts its child, which completes and tells it; then mail."""
    wf = definition(
        {
            "name": "order-with-invoice",
            "steps": [
                {"id": "invoice", "type": "sub_workflow", "config": {"workflow": "make-invoice"}},
                {"id": "mail", "task": "mail", "depends_on": ["invoice"]},
            ],
        }
    )
    rec = Recorder()
    rec.feed(started_event(wf, {"order": 42}), at(0))
    _, told = sub_workflow_child()
    rec.feed(told.event, ev.parse_timestamp(told.event.timestamp))
    run_step(rec, "mail", 1, {"mailed": True}, 4)
    return rec


def instance_fact(kind: str, index: int, attempt: int, payload: object, t: float) -> ev.Event:
    """A worker's report about one instance of the map step "each"."""
    return ev.make_event(
        kind,
        RUN_ID,
        payload,
        step_id="each",
        attempt=attempt,
        instance=index,
        timestamp=ev.format_timestamp(at(t)),
        worker_id="worker-1",
        id=ev.fact_id(kind, "each", attempt, index),
    )


def map_with_a_retry() -> Recorder:
    """list -> each (a map of three elements) -> sum; instance 1 fails once and is retried."""
    wf = definition(
        {
            "name": "add-one-to-each",
            "steps": [
                {"id": "list", "task": "list"},
                {
                    "id": "each",
                    "task": "add_one",
                    "type": "map",
                    "depends_on": ["list"],
                    "config": {"max_items": 10},
                    "retry": {"max_attempts": 2, "strategy": "fixed", "initial_delay": "2s"},
                },
                {"id": "sum", "task": "sum", "depends_on": ["each"]},
            ],
        }
    )
    rec = Recorder()
    rec.feed(started_event(wf), at(0))
    run_step(rec, "list", 1, [10, 20, 30], 1)
    for index in (0, 1, 2):
        rec.feed(instance_fact(ev.STEP_STARTED, index, 1, None, 3), at(3))
    rec.feed(instance_fact(ev.STEP_COMPLETED, 0, 1, 11, 4), at(4))
    rec.feed(
        instance_fact(ev.STEP_FAILED, 1, 1, {"error": "timeout talking to adder", "failure_type": "transient"}, 4),
        at(4),
    )
    rec.feed(instance_fact(ev.STEP_COMPLETED, 2, 1, 31, 5), at(5))
    fire(rec, RETRY, 6, instance=1)
    rec.feed(instance_fact(ev.STEP_STARTED, 1, 2, None, 7), at(7))
    rec.feed(instance_fact(ev.STEP_COMPLETED, 1, 2, 21, 8), at(8))
    run_step(rec, "sum", 1, 63, 9)
    return rec


def agent_loop() -> Recorder:
    """An agent loop of three iterations: two step.continue (with a 2 s loop delay), then an answer."""
    wf = definition(
        {
            "name": "research-agent",
            "steps": [
                {
                    "id": "think",
                    "task": "think",
                    "type": "agent_loop",
                    "config": {"max_iterations": 5, "loop_delay": "2s"},
                },
            ],
        }
    )
    rec = Recorder()
    rec.feed(started_event(wf, {"question": "why is the sky blue?"}), at(0))
    t = 1
    for attempt, notes in ((1, ["rayleigh"]), (2, ["rayleigh", "wavelength"])):
        rec.feed(started("think", attempt, t), at(t))
        rec.feed(worker_fact(ev.STEP_CONTINUE, "think", attempt, {"notes": notes}, at(t + 1)), at(t + 1))
        fire(rec, LOOP_DELAY, t + 3)
        t += 4
    run_step(rec, "think", 3, {"answer": "Rayleigh scattering"}, t)
    return rec


def planner_two_steps() -> Recorder:
    """A planner plans fetch -> total; both run, the planner completes, report runs after it.

    As recorded, the plan's last step counts as a sink of the run: the run's
    output is {"report": ..., "plan-total": ...}, not report's output alone.
    """
    wf = definition(
        {
            "name": "planned-report",
            "steps": [
                {
                    "id": "plan",
                    "task": "plan",
                    "type": "planner",
                    "config": {"max_steps": 5, "allowed_tasks": ["fetch", "total"]},
                },
                {"id": "report", "task": "report", "depends_on": ["plan"]},
            ],
        }
    )
    rec = Recorder()
    rec.feed(started_event(wf, {"month": "2025-01"}), at(0))
    plan = {
        "steps": [
            {"id": "fetch", "task": "fetch", "input": {"month": "2025-01"}},
            {"id": "total", "task": "total", "depends_on": ["fetch"]},
        ]
    }
    run_step(rec, "plan", 1, plan, 1)
    run_step(rec, "plan-fetch", 1, [5, 7], 3)
    run_step(rec, "plan-total", 1, 12, 5)
    run_step(rec, "report", 1, "January: 12", 7)
    return rec


def steps_added() -> Recorder:
    """A handler adds a step (ctx.add_step) before its result; the added step runs after it."""
    wf = definition({"name": "split-and-check", "steps": [{"id": "split", "task": "split"}]})
    rec = Recorder()
    rec.feed(started_event(wf, {"text": "a b"}), at(0))
    rec.feed(started("split", 1, 1), at(1))
    added = ev.make_event(
        ev.STEPS_ADDED,
        RUN_ID,
        {"steps": [{"id": "check", "task": "check", "depends_on": ["split"], "input": {"words": 2}}]},
        step_id="split",
        attempt=1,
        timestamp=ev.format_timestamp(at(2)),
        worker_id="worker-1",
        id=ev.fact_id(ev.STEPS_ADDED, "split", 1),
    )
    rec.feed(added, at(2))
    rec.feed(completed("split", 1, ["a", "b"], at(2)), at(2))
    run_step(rec, "check", 1, {"ok": True}, 3)
    return rec


def repeated_start(caller: str, t: float) -> ev.Event:
    return ev.make_event(
        ev.WORKFLOW_START_REPEATED,
        RUN_ID,
        {"caller": caller, "trace_state": "congo=t61rcWkgMzE"},
        timestamp=ev.format_timestamp(at(t)),
        id=f"start_repeated.{caller.split('-')[2]}",
    )


def traced_repeated_start() -> Recorder:
    """A run started with a tracestate and baggage (its task carries both); a start answered
    with the run while it runs and another after it ended link their callers, once each."""
    wf = definition({"name": "traced-one", "steps": [{"id": "only", "task": "only"}]})
    start = started_event(wf, "x")
    payload = msgspec.structs.replace(start.payload, trace_state="congo=t61rcWkgMzE", baggage="tenant=acme")
    rec = Recorder()
    rec.feed(msgspec.structs.replace(start, payload=payload), at(0))
    first = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    rec.feed(repeated_start(first, 1), at(1))
    rec.feed(repeated_start(first, 1.5), at(1.5))  # the same caller again: folds to no change
    run_step(rec, "only", 1, "done", 2)
    rec.feed(repeated_start("00-4bf92f3577b34da6a3ce929d0e0e4736-b7ad6b7169203331-01", 5), at(5))
    return rec


def respond_then_audit() -> Recorder:
    """An http trigger's run: price, then respond (answered at once, by the engine), then audit."""
    wf = definition(
        {
            "name": "price-quote",
            "steps": [
                {"id": "price", "task": "price"},
                {"id": "reply", "type": "respond", "depends_on": ["price"], "config": {"status": 201}},
                {"id": "audit", "task": "audit", "depends_on": ["reply"]},
            ],
        }
    )
    rec = Recorder()
    rec.feed(started_event(wf, {"trigger": "http", "data": {"body": {"sku": "A-1"}}}), at(0))
    run_step(rec, "price", 1, {"total": 9.99}, 1)
    run_step(rec, "audit", 1, "logged", 2)
    return rec


SCENARIOS = {
    "hello-pipeline": hello_pipeline,
    "retry-then-success": retry_then_success,
    "exhausted-retries": exhausted_retries,
    "sleep-then-remind": sleep_then_remind,
    "approval-granted": approval_granted,
    "wait-for-payment": wait_for_payment,
    "sub-workflow-parent": sub_workflow_parent,
    "sub-workflow-child": lambda: sub_workflow_child()[0],
    "map-with-a-retry": map_with_a_retry,
    "agent-loop": agent_loop,
    "planner-two-steps": planner_two_steps,
    "steps-added": steps_added,
    "traced-repeated-start": traced_repeated_start,
    "respond-then-audit": respond_then_audit,
}


def write(name: str, rec: Recorder) -> None:
    history = msgspec.to_builtins(rec.history)
    (HERE / f"{name}.history.json").write_text(json.dumps(history, indent=1, ensure_ascii=False) + "\n")
    state = msgspec.to_builtins(rec.run)
    (HERE / f"{name}.expected.json").write_text(json.dumps(state, indent=1, ensure_ascii=False) + "\n")


def write_reactive(name: str) -> None:
    """A reactive execution's history (the ``reactive.*`` event family): its records
    as stored, one list of events per input, and the execution they fold to."""
    from reactive_support import plan_review_records

    from dagnats.domain.reactive.fold import Execution, replay

    records = plan_review_records()
    history = [msgspec.to_builtins(r) for r in records]
    (HERE / f"{name}.reactive-history.json").write_text(json.dumps(history, indent=1, ensure_ascii=False) + "\n")
    final = replay((e for r in records for e in r), Execution("reactive-golden"))
    expected = json.dumps(msgspec.to_builtins(final), indent=1, ensure_ascii=False)
    (HERE / f"{name}.reactive-expected.json").write_text(expected + "\n")


if __name__ == "__main__":
    chosen = set(sys.argv[1:])  # names to write (default: all)
    for name, scenario in SCENARIOS.items():
        if chosen and name not in chosen:
            continue
        write(name, scenario())
        print(f"wrote {name}")
    if not chosen or "reactive-plan-review" in chosen:
        write_reactive("reactive-plan-review")
        print("wrote reactive-plan-review")
