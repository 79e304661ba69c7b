"""Every step type's decisions, pure: start, facts, timers, failures and recovery."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from dagnats.domain import events as ev
from dagnats.domain import state as rs
from dagnats.domain.actions import (
    AppendEvent,
    CancelTimer,
    DropTask,
    EnqueueTask,
    PublishFact,
    PublishMessage,
    RegisterWaiter,
    RemoveWaiter,
    StartChildRun,
    StartTimer,
)
from dagnats.domain.decide import recover
from dagnats.domain.decision import DEFAULT_MAX_MESSAGE, INLINE_VALUE_LIMIT
from dagnats.domain.definition import PlannerConfig, StepDef, WorkflowDef
from dagnats.domain.fragments import chain_depth, plan_problems
from dagnats.domain.kinds.children import MAX_DEPTH, child_run_id
from dagnats.domain.kinds.maps import MAX_QUEUED_AT_ONCE
from dagnats.domain.schedules import next_occurrence
from dagnats.domain.timers import APPROVAL_TIMEOUT, LOOP_DELAY, SLEEP, WAIT_TIMEOUT

from strategies import RUN_ID, Recorder, at, completed, failed, started_event, timer_fired, worker_fact


def wf(*steps: StepDef, **fields: Any) -> WorkflowDef:
    return WorkflowDef(name="wf", steps=steps, **fields)


def step(step_id: str, step_type: str = "normal", *deps: str, **fields: Any) -> StepDef:
    task = fields.pop("task", step_id if step_type in ("normal", "agent", "map", "agent_loop", "planner") else "")
    return StepDef(id=step_id, task=task, type=step_type, depends_on=deps, **fields)  # type: ignore[arg-type]


def start(defn: WorkflowDef, data: Any = None) -> Recorder:
    rec = Recorder()
    rec.feed(started_event(defn, data), at(0))
    return rec


def of(actions: list, cls: type) -> list:
    return [a for a in actions if isinstance(a, cls)]


def appended(actions: list, cls: type) -> list:
    return [a.event for a in actions if isinstance(a, AppendEvent) and isinstance(a.event, cls)]


def fire(rec: Recorder, kind: str, t: float) -> list:
    (due,) = [timer for timer in rec.timers if timer.kind == kind][-1:]
    return rec.feed(timer_fired(due, at(t)), at(t))


def instance_fact(kind: str, step_id: str, index: int, attempt: int, payload: Any = None, t: float = 1) -> ev.Event:
    return ev.make_event(
        kind,
        RUN_ID,
        payload,
        step_id=step_id,
        attempt=attempt,
        instance=index,
        timestamp=ev.format_timestamp(at(t)),
        worker_id="worker-1",
        id=ev.fact_id(kind, step_id, attempt, index),
    )


# ---- sleep -----------------------------------------------------------------------------------------


def test_a_sleep_runs_until_its_timer_and_completes_with_null():
    rec = start(wf(step("nap", "sleep", config={"duration": "90s"}), step("after", "normal", "nap")))
    (started,) = appended(rec.actions, ev.StepSleepStarted)
    assert started.payload.wake_at == ev.format_timestamp(at(90))
    assert rec.run.step("nap").waiting.kind == "sleep" and rec.run.step("nap").status == rs.StepStatus.RUNNING
    assert [t.kind for t in rec.timers] == [SLEEP]
    actions = fire(rec, SLEEP, 90)
    assert rec.run.step("nap").status == rs.StepStatus.COMPLETED and rec.run.step("nap").output is None
    assert [a.payload.step_id for a in of(actions, EnqueueTask)] == ["after"]


def test_a_sleep_until_a_past_time_completes_at_once_and_a_far_one_fails():
    rec = start(wf(step("nap", "sleep", config={"until_input_path": "wake"})), {"wake": "2020-01-01T00:00:00Z"})
    assert rec.run.status == rs.RunStatus.COMPLETED
    far = start(wf(step("nap", "sleep", config={"until_input_path": "wake"})), {"wake": "2027-01-01T00:00:00Z"})
    assert far.run.status == rs.RunStatus.FAILED and "more than 365 days away" in far.run.error


@pytest.mark.parametrize(
    ("value", "problem"), [("tomorrow", "is not a time"), (True, "is not a time"), (None, "is not a time")]
)
def test_a_sleep_until_a_value_that_is_not_a_time_fails_the_step(value, problem):
    rec = start(wf(step("nap", "sleep", config={"until_input_path": "wake"})), {"wake": value})
    assert rec.run.status == rs.RunStatus.FAILED and problem in rec.run.step("nap").error


@pytest.mark.timeout(10)
def test_a_step_failing_at_its_start_fails_the_run_and_leaves_its_dependents_alone():
    # It used to loop forever: the dependents were skipped again and again after the run ended.
    defn = wf(step("nap", "sleep", config={"until_input_path": "wake"}), step("after", "normal", "nap"), step("b"))
    rec = start(defn, {"wake": "tomorrow"})
    assert rec.run.status == rs.RunStatus.FAILED
    assert (rec.run.step("after").status, rec.run.step("b").status) == (rs.StepStatus.PENDING, rs.StepStatus.PENDING)
    assert [type(a.event) for a in rec.actions] == [ev.StepQueued, ev.StepFailed, ev.WorkflowFailed]


def test_a_sleep_until_milliseconds_and_a_missing_input_path():
    ms = int((at(30).timestamp()) * 1000)
    rec = start(wf(step("nap", "sleep", config={"until_input_path": "wake"})), {"wake": ms})
    assert rec.run.step("nap").waiting.due == ev.format_timestamp(at(30))
    missing = start(wf(step("nap", "sleep", config={"until_input_path": "wake"})), {})
    assert "the run input has no 'wake'" in missing.run.step("nap").error


def test_a_cron_sleep_wakes_at_the_next_occurrence():
    rec = start(wf(step("nap", "sleep", config={"cron": "*/15 * * * *"})))
    assert rec.run.step("nap").waiting.due == ev.format_timestamp(at(15 * 60))
    assert next_occurrence("0 9 * * 1", at(0)).isoformat() == "2025-01-06T09:00:00+00:00"


# ---- respond ---------------------------------------------------------------------------------------


def test_a_respond_step_publishes_its_answer_completes_and_the_run_goes_on():
    defn = wf(
        step("price"),
        step("reply", "respond", "price", config={"status": 201, "headers": {"X-A": "b"}, "body_from": "quote"}),
        step("audit", "normal", "reply"),
    )
    rec = start(defn, {"sku": "A-1"})
    actions = rec.feed(completed("price", 1, {"quote": {"total": 3}}), at(1))
    (message,) = of(actions, PublishMessage)
    assert message.subject == f"dagnats.http.response.{RUN_ID}"
    assert message.payload == {
        "status": 201,
        "headers": {"X-A": "b"},
        "content_type": "application/json",
        "body": base64.b64encode(b'{"total":3}').decode(),
    }
    assert rec.run.step("reply").status == rs.StepStatus.COMPLETED
    assert rec.run.step("reply").output["body"] == {"total": 3}
    assert [t.task for t in of(actions, EnqueueTask)] == ["audit"]


def test_a_respond_step_without_input_answers_with_the_run_input_as_text_or_fails_on_a_missing_path():
    text = start(wf(step("reply", "respond", config={"content_type": "text/plain", "body_from": "msg"})), {"msg": "hi"})
    (message,) = of(text.actions, PublishMessage)
    assert base64.b64decode(message.payload["body"]) == b"hi"
    missing = start(wf(step("reply", "respond", config={"body_from": "nope"})), {"msg": "hi"})
    assert of(missing.actions, PublishMessage) == []
    assert missing.run.step("reply").status == rs.StepStatus.FAILED
    assert "body_from 'nope'" in missing.run.step("reply").error


# ---- approval --------------------------------------------------------------------------------------


APPROVE = step("ok", "approval", config={"subject": "approvals.deploy", "timeout": "1h", "description": "ship?"})


def test_an_approval_asks_on_its_subject_and_completes_with_the_decision():
    rec = start(wf(APPROVE))
    (message,) = of(rec.actions, PublishMessage)
    assert message.subject == "approvals.deploy" and message.approval_step == "ok"
    assert message.payload["description"] == "ship?" and message.payload["expires_at"] == ev.format_timestamp(at(3600))
    assert [t.kind for t in rec.timers] == [APPROVAL_TIMEOUT]
    granted = ev.ApprovalGranted(
        run_id=RUN_ID,
        step_id="ok",
        attempt=1,
        timestamp=ev.format_timestamp(at(5)),
        payload=ev.ApprovalDecision(comment="lgtm", by="ann"),
        id="ok.1.approval",
    )
    actions = rec.feed(granted, at(5))
    assert rec.run.status == rs.RunStatus.COMPLETED
    assert rec.run.step("ok").output == {"approved": True, "comment": "lgtm", "by": "ann"}
    assert [c.timer_id for c in of(actions, CancelTimer)] == ["approval-timeout-ok-1"]
    assert rec.feed(granted, at(6)) == []  # a second decision changes nothing


def test_a_rejected_approval_fails_the_step_for_good_and_a_late_approval_changes_nothing():
    rec = start(wf(APPROVE))
    rejected = ev.ApprovalRejected(
        run_id=RUN_ID,
        step_id="ok",
        attempt=1,
        timestamp=ev.format_timestamp(at(5)),
        payload=ev.ApprovalDecision(reason="not today"),
        id="ok.1.approval",
    )
    rec.feed(rejected, at(5))
    assert rec.run.status == rs.RunStatus.FAILED and rec.run.step("ok").error == "rejected: not today"


def test_an_approval_that_times_out_fails():
    rec = start(wf(APPROVE))
    fire(rec, APPROVAL_TIMEOUT, 3600)
    assert rec.run.status == rs.RunStatus.FAILED and rec.run.step("ok").error == "approval timed out"


# ---- wait_for_event ----------------------------------------------------------------------------------


def waiting_step(right: str = "input.order", op: str = "eq") -> StepDef:
    return step(
        "pay",
        "wait_for_event",
        config={"event": "paid", "match": {"left": "order", "op": op, "right": right}, "timeout": "10m"},
    )


def test_a_wait_registers_its_resolved_match_and_completes_with_the_event():
    rec = start(wf(waiting_step()), {"order": 42})
    (waiter,) = of(rec.actions, RegisterWaiter)
    assert (waiter.event, waiter.left, waiter.op, waiter.right, waiter.attempt) == ("paid", "order", "eq", 42, 1)
    assert waiter.since == ev.format_timestamp(at(0))
    matched = ev.StepWaitMatched(
        run_id=RUN_ID,
        step_id="pay",
        attempt=1,
        timestamp=ev.format_timestamp(at(9)),
        payload=ev.EventMatch(data={"order": 42, "paid": True}, seq=7),
        id="pay.1.step.wait.matched",
    )
    actions = rec.feed(matched, at(9))
    assert rec.run.status == rs.RunStatus.COMPLETED and rec.run.output == {"order": 42, "paid": True}
    assert of(actions, RemoveWaiter) == []  # the correlator removed it when it matched


def test_a_wait_times_out_to_a_timeout_output_and_removes_its_waiter():
    rec = start(wf(waiting_step()), {"order": 42})
    actions = fire(rec, WAIT_TIMEOUT, 600)
    assert rec.run.step("pay").output == {"timeout": True}
    assert of(actions, RemoveWaiter) == [RemoveWaiter("paid", "pay", "eq", 42)]


def test_a_wait_resolves_its_right_side_from_an_upstream_output_and_fails_without_one():
    defn = wf(
        step("a"),
        step(
            "pay",
            "wait_for_event",
            "a",
            config={
                "event": "paid",
                "match": {"left": "id", "op": "gt", "right": "step.a.output.limit"},
                "timeout": "1m",
            },
        ),
    )
    rec = start(defn)
    rec.feed(completed("a", 1, {"limit": 5}, at(1)), at(1))
    assert of(rec.actions, RegisterWaiter)[0].right == 5
    bad = start(defn)
    bad.feed(completed("a", 1, {}, at(1)), at(1))
    assert bad.run.status == rs.RunStatus.FAILED and "no value there" in bad.run.step("pay").error


def test_a_cancelled_run_removes_its_waiters():
    rec = start(wf(waiting_step()), {"order": 1})
    cancel = ev.WorkflowCancelled(
        run_id=RUN_ID, timestamp=ev.format_timestamp(at(3)), id="cancel.x", payload=ev.RunEnd(reason="user")
    )
    actions = rec.feed(cancel, at(3))
    assert of(actions, RemoveWaiter) == [RemoveWaiter("paid", "pay", "eq", 1)]


# ---- sub_workflow --------------------------------------------------------------------------------------


def test_a_child_run_is_started_and_its_outcome_completes_or_fails_the_step():
    rec = start(wf(step("sub", "sub_workflow", config={"workflow": "child"}, retries=1)), {"x": 1})
    (child,) = of(rec.actions, StartChildRun)
    assert child.child_run_id == child_run_id(RUN_ID, "sub", 1) and child.input == {"x": 1}
    assert (child.depth, child.root_run_id, child.detach) == (1, RUN_ID, False)
    failure = ev.ChildFailed(
        run_id=RUN_ID,
        step_id="sub",
        attempt=1,
        timestamp=ev.format_timestamp(at(2)),
        payload=ev.ChildResult(child_run_id=child.child_run_id, status="failed", error="boom"),
        id="child.x.ended",
    )
    rec.feed(failure, at(2))
    assert rec.run.step("sub").status == rs.StepStatus.RETRYING
    actions = fire(rec, "retry", 10)
    (again,) = of(actions, StartChildRun)
    assert again.child_run_id == child_run_id(RUN_ID, "sub", 2) != child.child_run_id
    done = ev.ChildCompleted(
        run_id=RUN_ID,
        step_id="sub",
        attempt=2,
        timestamp=ev.format_timestamp(at(12)),
        payload=ev.ChildResult(child_run_id=again.child_run_id, status="completed", output={"y": 2}),
        id="child.y.ended",
    )
    rec.feed(done, at(12))
    assert rec.run.status == rs.RunStatus.COMPLETED and rec.run.output == {"y": 2}


def test_a_detached_child_completes_the_step_at_once():
    rec = start(wf(step("sub", "sub_workflow", config={"workflow": "child", "detach": True})))
    (child,) = of(rec.actions, StartChildRun)
    assert child.detach and rec.run.output == {"child_run_id": child.child_run_id}


def test_a_child_that_ends_tells_its_parent_and_a_parent_that_ends_cancels_its_children():
    child_start = ev.WorkflowStarted(
        run_id="kid",
        timestamp=ev.format_timestamp(at(0)),
        id=ev.WORKFLOW_STARTED,
        payload=ev.RunStart(
            workflow_def=wf(step("a")),
            parent_run_id=RUN_ID,
            parent_step_id="sub",
            parent_attempt=1,
            root_run_id=RUN_ID,
            depth=1,
        ),
    )
    kid = Recorder(run=rs.new_run("kid"))
    kid.feed(child_start, at(0))
    actions = kid.feed(
        ev.make_event(
            ev.STEP_COMPLETED,
            "kid",
            "out",
            step_id="a",
            attempt=1,
            timestamp=ev.format_timestamp(at(1)),
            id="a.1.step.completed",
        ),
        at(1),
    )
    (told,) = of(actions, PublishFact)
    assert isinstance(told.event, ev.ChildCompleted) and told.event.run_id == RUN_ID
    assert (told.event.step_id, told.event.attempt, told.event.payload.output) == ("sub", 1, "out")
    assert recover(kid.run, at(5)) == [told]  # a rebuilt child that ended tells its parent again
    parent = start(wf(step("sub", "sub_workflow", config={"workflow": "child"})))
    cancel = ev.WorkflowCancelled(
        run_id=RUN_ID, timestamp=ev.format_timestamp(at(3)), id="cancel.x", payload=ev.RunEnd(reason="user")
    )
    (to_child,) = of(parent.feed(cancel, at(3)), PublishFact)
    assert isinstance(to_child.event, ev.WorkflowCancelled)
    assert to_child.event.run_id == child_run_id(RUN_ID, "sub", 1)


def test_nesting_past_the_bound_fails_the_step():
    deep = ev.WorkflowStarted(
        run_id="deep",
        timestamp=ev.format_timestamp(at(0)),
        id=ev.WORKFLOW_STARTED,
        payload=ev.RunStart(
            workflow_def=wf(step("sub", "sub_workflow", config={"workflow": "again"})),
            parent_run_id="p",
            parent_step_id="s",
            depth=MAX_DEPTH,
        ),
    )
    rec = Recorder(run=rs.new_run("deep"))
    rec.feed(deep, at(0))
    assert rec.run.status == rs.RunStatus.FAILED and "nesting deeper than" in rec.run.step("sub").error


# ---- map --------------------------------------------------------------------------------------------


def mapped(**config: Any) -> WorkflowDef:
    return wf(
        step("list"),
        step("each", "map", "list", config=config or None, retry={"max_attempts": 1, "initial_delay": "1s"}),
    )


def test_a_map_runs_one_instance_per_element_and_outputs_them_in_order():
    rec = start(mapped())
    actions = rec.feed(completed("list", 1, [10, 20, 30], at(1)), at(1))
    tasks = of(actions, EnqueueTask)
    assert [(t.payload.instance, t.payload.input) for t in tasks] == [(0, 10), (1, 20), (2, 30)]
    for index in (2, 0, 1):
        rec.feed(instance_fact(ev.STEP_COMPLETED, "each", index, 1, index * 100, t=2), at(2))
    assert rec.run.status == rs.RunStatus.COMPLETED and rec.run.output == [0, 100, 200]


def test_a_map_keeps_at_most_concurrency_instances_in_flight():
    rec = start(mapped(concurrency=2))
    actions = rec.feed(completed("list", 1, list(range(5)), at(1)), at(1))
    assert [t.payload.instance for t in of(actions, EnqueueTask)] == [0, 1]
    actions = rec.feed(instance_fact(ev.STEP_COMPLETED, "each", 0, 1, "x"), at(2))
    assert [t.payload.instance for t in of(actions, EnqueueTask)] == [2]


def test_a_map_of_all_at_once_queues_what_one_record_holds_and_the_rest_as_instances_finish():
    rec = start(mapped(max_items=5000))
    actions = rec.feed(completed("list", 1, list(range(5000)), at(1)), at(1))
    queued = [t.payload.instance for t in of(actions, EnqueueTask)]
    assert queued == list(range(MAX_QUEUED_AT_ONCE))
    record = sum(len(ev.encode_event(e)) for e in appended(actions, ev.StepQueued))
    assert record < DEFAULT_MAX_MESSAGE
    actions = rec.feed(instance_fact(ev.STEP_COMPLETED, "each", 0, 1, "x"), at(2))
    assert [t.payload.instance for t in of(actions, EnqueueTask)] == [MAX_QUEUED_AT_ONCE]


def test_a_map_of_middling_elements_queues_what_half_a_record_holds():
    element = "x" * (INLINE_VALUE_LIMIT - 100)  # recorded inline, not as a reference
    rec = start(mapped(max_items=2000))
    actions = rec.feed(completed("list", 1, [element] * 2000, at(1)), at(1))
    queued = of(actions, EnqueueTask)
    assert 0 < len(queued) < MAX_QUEUED_AT_ONCE
    assert sum(len(ev.encode_event(e)) for e in appended(actions, ev.StepQueued)) < DEFAULT_MAX_MESSAGE // 2 + 4096
    actions = rec.feed(instance_fact(ev.STEP_COMPLETED, "each", 0, 1, "x"), at(2))
    more = [t.payload.instance for t in of(actions, EnqueueTask)]  # the next decision queues the next batch
    assert more == list(range(len(queued), len(queued) + len(more))) and more
    assert sum(len(ev.encode_event(e)) for e in appended(actions, ev.StepQueued)) < DEFAULT_MAX_MESSAGE // 2 + 4096


def test_an_instance_retries_alone_and_one_that_fails_for_good_fails_the_map():
    rec = start(mapped())
    rec.feed(completed("list", 1, ["a", "b"], at(1)), at(1))
    rec.feed(instance_fact(ev.STEP_FAILED, "each", 1, 1, {"error": "flaky"}), at(2))
    assert rec.run.step("each").instances[1].status == rs.StepStatus.RETRYING
    actions = fire(rec, "retry", 5)
    (task,) = of(actions, EnqueueTask)
    assert (task.payload.instance, task.payload.attempt, task.payload.input) == (1, 2, "b")
    actions = rec.feed(instance_fact(ev.STEP_FAILED, "each", 1, 2, {"error": "still broken"}, t=6), at(6))
    assert rec.run.status == rs.RunStatus.FAILED
    assert "map instance 1 failed after 2 attempts: still broken" in rec.run.error
    assert of(actions, DropTask)  # the other instance's task leaves the queue


@pytest.mark.parametrize(
    ("output", "problem"),
    [({"a": 1}, "is not an array (got an object)"), (list(range(4)), "4 items, more than max_items 3")],
)
def test_a_map_input_that_is_not_a_small_enough_array_fails_the_step(output, problem):
    rec = start(mapped(max_items=3))
    rec.feed(completed("list", 1, output, at(1)), at(1))
    assert rec.run.status == rs.RunStatus.FAILED and problem in rec.run.step("each").error


def test_a_map_refusing_its_input_ends_the_run_and_starts_nothing_beside_or_after_it():
    # The map fails inside the decision that would start its sibling: once the run
    # has failed, neither the sibling nor the map's dependent may start (this looped).
    defn = wf(
        step("list"),
        step("each", "map", "list", config={"max_items": 1}),
        step("sibling", "normal", "list"),
        step("after", "normal", "each"),
    )
    rec = start(defn)
    actions = rec.feed(completed("list", 1, [1, 2], at(1)), at(1))
    assert rec.run.status == rs.RunStatus.FAILED and "more than max_items 1" in rec.run.error
    assert of(actions, EnqueueTask) == []
    assert appended(actions, ev.WorkflowFailed) and len(appended(actions, ev.WorkflowFailed)) == 1


def test_an_empty_map_completes_at_once_with_an_empty_array():
    rec = start(mapped())
    rec.feed(completed("list", 1, [], at(1)), at(1))
    assert rec.run.status == rs.RunStatus.COMPLETED and rec.run.output == []


def test_a_rebuilt_map_reissues_its_queued_instances():
    rec = start(mapped())
    rec.feed(completed("list", 1, [1, 2], at(1)), at(1))
    rec.feed(instance_fact(ev.STEP_COMPLETED, "each", 0, 1, "done"), at(2))
    reissued = of(recover(rec.run, at(3)), EnqueueTask)
    assert [(t.payload.instance, t.payload.input) for t in reissued] == [(1, 2)]


# ---- agent_loop --------------------------------------------------------------------------------------


def looping(**config: Any) -> WorkflowDef:
    return wf(step("think", "agent_loop", config={"max_iterations": 3, **config}))


def continued(data: Any, attempt: int, t: float) -> ev.Event:
    return worker_fact(ev.STEP_CONTINUE, "think", attempt, data, at(t))


def test_continue_runs_the_next_iteration_with_its_data_until_a_result():
    rec = start(looping(), "go")
    actions = rec.feed(continued({"n": 1}, 1, 1), at(1))
    (task,) = of(actions, EnqueueTask)
    assert (task.payload.attempt, task.payload.iteration, task.payload.input) == (2, 1, {"n": 1})
    rec.feed(completed("think", 2, "answer", at(2)), at(2))
    assert rec.run.output == "answer" and rec.run.step("think").iterations == 1


def test_a_loop_delay_is_a_durable_timer():
    rec = start(looping(loop_delay="5s"))
    rec.feed(continued(1, 1, 1), at(1))
    assert rec.run.step("think").status == rs.StepStatus.CONTINUING
    assert [t.kind for t in rec.timers][-1] == LOOP_DELAY
    actions = fire(rec, LOOP_DELAY, 6)
    assert [t.payload.iteration for t in of(actions, EnqueueTask)] == [1]


def test_continuing_past_max_iterations_or_max_duration_fails_the_step():
    rec = start(looping())
    for attempt in (1, 2, 3):
        rec.feed(continued(attempt, attempt, attempt), at(attempt))
    assert rec.run.status == rs.RunStatus.FAILED
    assert rec.run.step("think").error == "agent loop exceeded max_iterations (3)"
    slow = start(looping(max_duration="10s"))
    slow.feed(continued(1, 1, 11), at(11))
    assert slow.run.step("think").error == "agent loop exceeded max_duration (10s)"


# ---- planner and added steps -------------------------------------------------------------------------


def planning(**config: Any) -> WorkflowDef:
    return wf(step("plan", "planner", config={"max_steps": 5, **config}), step("after", "normal", "plan"))


def test_a_plan_becomes_steps_of_the_run_and_its_dependents_wait_for_them():
    rec = start(planning())
    plan = {
        "steps": [
            {"id": "fetch", "task": "fetch", "input": {"url": "u"}},
            {"id": "sum", "task": "sum", "depends_on": ["fetch"]},
        ]
    }
    actions = rec.feed(completed("plan", 1, plan, at(1)), at(1))
    assert rec.run.dynamic_steps == ("plan-fetch", "plan-sum")
    assert [(t.payload.step_id, t.payload.input) for t in of(actions, EnqueueTask)] == [("plan-fetch", {"url": "u"})]
    assert rec.run.step("plan").status == rs.StepStatus.RUNNING
    rec.feed(completed("plan-fetch", 1, 10, at(2)), at(2))
    actions = rec.feed(completed("plan-sum", 1, 11, at(3)), at(3))
    assert rec.run.step("plan").status == rs.StepStatus.COMPLETED
    assert rec.run.step("plan").output == {"plan-sum": 11}
    assert [t.payload.step_id for t in of(actions, EnqueueTask)] == ["after"]


@pytest.mark.parametrize(
    ("steps", "problem"),
    [
        ([{"id": "a", "task": "t", "depends_on": ["b"]}, {"id": "b", "task": "t", "depends_on": ["a"]}], "cycle"),
        ([{"id": "a", "task": "nope"}], "not in allowed_tasks"),
        ([{"id": "a", "task": "t", "depends_on": ["elsewhere"]}], "not in the plan"),
        ([{"id": "a.b", "task": "t"}], "is not an identifier"),
        ([{"id": "a", "task": "t"}, {"id": "a", "task": "t"}], "duplicate step id"),
        ([{"id": f"s{n}", "task": "t"} for n in range(6)], "more than max_steps 5"),
        ([{"id": "a", "task": "t", "required_capabilities": ["cuda"]}], "only for steps of a registered workflow"),
    ],
)
def test_an_invalid_plan_fails_the_planner_saying_why(steps, problem):
    rec = start(planning(allowed_tasks=["t"]))
    rec.feed(completed("plan", 1, {"steps": steps}, at(1)), at(1))
    assert rec.run.status == rs.RunStatus.FAILED and problem in rec.run.step("plan").error
    assert rec.run.dynamic_steps == ()


def test_a_plan_whose_optional_step_fails_for_good_still_completes_the_planner():
    rec = start(planning())
    plan = {"steps": [{"id": "a", "task": "t", "optional": True}, {"id": "b", "task": "t"}]}
    rec.feed(completed("plan", 1, plan, at(1)), at(1))
    rec.feed(completed("plan-b", 1, "b", at(2)), at(2))
    actions = rec.feed(failed("plan-a", 1, "gone", "permanent", at(3)), at(3))
    assert rec.run.step("plan-a").status == rs.StepStatus.FAILED
    assert rec.run.step("plan").status == rs.StepStatus.COMPLETED
    assert [t.payload.step_id for t in of(actions, EnqueueTask)] == ["after"]


def test_an_empty_plan_completes_the_planner():
    rec = start(planning())
    rec.feed(completed("plan", 1, {"steps": []}, at(1)), at(1))
    assert rec.run.step("plan").status == rs.StepStatus.COMPLETED and rec.run.step("plan").output == {}


def test_plan_problems_and_chain_depth():
    t = PlannerConfig(max_steps=10, max_depth=2)
    chain = [
        StepDef(id="a", task="t"),
        StepDef(id="b", task="t", depends_on=("a",)),
        StepDef(id="c", task="t", depends_on=("b",)),
    ]
    assert chain_depth(chain) == 3
    assert "deeper than max_depth 2" in plan_problems(chain, t, 0)
    assert plan_problems(chain[:2], t, 0) == ""
    assert "at most 500" in plan_problems(chain[:1], t, 500)


def added(steps: list[dict], attempt: int = 1) -> ev.Event:
    return ev.make_event(
        ev.STEPS_ADDED,
        RUN_ID,
        {"steps": steps},
        step_id="a",
        attempt=attempt,
        timestamp=ev.format_timestamp(at(1)),
        id=ev.fact_id(ev.STEPS_ADDED, "a", attempt),
    )


def test_steps_a_handler_adds_run_after_it_and_once_across_retries():
    rec = start(wf(step("a", retries=1)))
    rec.feed(worker_fact(ev.STEP_STARTED, "a", 1, None, at(1)), at(1))
    extra = [{"id": "extra", "task": "x", "depends_on": ["a"], "input": 5}]
    rec.feed(added(extra), at(1))
    rec.feed(failed("a", 1, "boom", moment=at(2)), at(2))
    fire(rec, "retry", 8)
    rec.feed(added(extra, attempt=2), at(9))
    assert rec.run.dynamic_steps == ("extra",)
    actions = rec.feed(completed("a", 2, "ok", at(10)), at(10))
    assert [(t.payload.step_id, t.payload.input) for t in of(actions, EnqueueTask)] == [("extra", 5)]


def test_a_bad_added_step_fails_the_attempt_that_added_it():
    rec = start(wf(step("a")))
    rec.feed(added([{"id": "extra", "task": "x", "depends_on": ["a", "ghost"]}]), at(1))
    assert rec.run.status == rs.RunStatus.FAILED and "unknown step 'ghost'" in rec.run.step("a").error
    assert rec.run.dynamic_steps == ()


def test_an_added_step_requiring_capabilities_fails_the_attempt_that_added_it():
    # Workers learn capability sets from registered definitions: no worker would take it.
    rec = start(wf(step("a")))
    rec.feed(added([{"id": "extra", "task": "x", "depends_on": ["a"], "required_capabilities": ["cuda"]}]), at(1))
    assert rec.run.status == rs.RunStatus.FAILED
    assert "'extra': required_capabilities are only for steps of a registered workflow" in rec.run.step("a").error
    assert rec.run.dynamic_steps == ()


# ---- every step type through the same properties ----------------------------------------------------


def test_timers_of_every_kind_are_cancelled_when_the_run_ends():
    rec = start(wf(APPROVE, waiting_step(), step("nap", "sleep", config={"duration": "1h"})), {"order": 1})
    armed = {t.timer_id for t in rec.timers}
    cancel = ev.WorkflowCancelled(
        run_id=RUN_ID, timestamp=ev.format_timestamp(at(3)), id="cancel.x", payload=ev.RunEnd(reason="user")
    )
    actions = rec.feed(cancel, at(3))
    assert {c.timer_id for c in of(actions, CancelTimer)} == armed
    assert all(isinstance(t, StartTimer) for t in rec.timers)
