"""How each step type's own events change a step's state (``fold`` calls these).

A normal step moves queued -> running -> completed|failed on a worker's facts
(``fold.py``). The others open an attempt the engine runs itself (a sleep,
an approval, a wait for an event, a child run, a map) and wait in ``running``
with a ``Waiting`` that says for what; an agent loop waits between
iterations in ``continuing``; a planner's plan becomes steps of the run.
Steps added while a run runs join its definition, so everything else reads
them like steps written in it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from . import events as ev
from . import state as st
from .definition import StepDef
from .fragments import added_problem

replace = msgspec.structs.replace

StepMutator = Callable[[st.WorkflowRun, st.StepState, Any], st.StepState]
RunChanges = Callable[[st.WorkflowRun, Any], dict[str, Any]]


def _opened(step: st.StepState, event: ev.Event, waiting: st.Waiting) -> st.StepState:
    """An attempt the engine runs itself: it runs from now, waiting for ``waiting``."""
    return replace(
        step,
        attempts=event.attempt,
        queued_at=event.timestamp,
        started_at=event.timestamp,
        finished_at="",
        retry_at="",
        output=None,
        error="",
        failure_type="",
        waiting=waiting,
    )


def _done(run: st.WorkflowRun, step: st.StepState, event: ev.Event, output: Any) -> st.StepState:
    return replace(
        step,
        output=output,
        error="",
        failure_type="",
        finished_at=event.timestamp,
        completed_order=run.completions + 1,
        waiting=None,
    )


def _failed(step: st.StepState, event: ev.Event, error: str, failure: ev.FailureType) -> st.StepState:
    return replace(step, error=error, failure_type=failure.value, finished_at=event.timestamp, waiting=None)


# ---- sleep ---------------------------------------------------------------------------------


def _sleep_started(run: st.WorkflowRun, step: st.StepState, event: ev.StepSleepStarted) -> st.StepState:
    return _opened(step, event, st.Waiting(kind="sleep", since=event.timestamp, due=event.payload.wake_at))


def _sleep_completed(run: st.WorkflowRun, step: st.StepState, event: ev.StepSleepCompleted) -> st.StepState:
    return _done(run, step, event, None)


# ---- approval ----------------------------------------------------------------------------------


def _approval_requested(run: st.WorkflowRun, step: st.StepState, event: ev.ApprovalRequested) -> st.StepState:
    request = event.payload
    waiting = st.Waiting(
        kind="approval",
        since=event.timestamp,
        due=request.expires_at,
        subject=request.subject,
        description=request.description,
    )
    return _opened(step, event, waiting)


def approval_output(decision: ev.ApprovalDecision) -> dict[str, Any]:
    """What an approved step outputs: the decision, and any data the approver sent."""
    output: dict[str, Any] = {"approved": True, "comment": decision.comment}
    if decision.by:
        output["by"] = decision.by
    if decision.data is not None:
        output["data"] = decision.data
    return output


def _approval_granted(run: st.WorkflowRun, step: st.StepState, event: ev.ApprovalGranted) -> st.StepState:
    return _done(run, step, event, approval_output(event.payload))


def _approval_rejected(run: st.WorkflowRun, step: st.StepState, event: ev.ApprovalRejected) -> st.StepState:
    reason = event.payload.reason or "approval rejected"
    return _failed(step, event, f"rejected: {reason}", ev.FailureType.PERMANENT)


# ---- wait_for_event --------------------------------------------------------------------------------


def _wait_started(run: st.WorkflowRun, step: st.StepState, event: ev.StepWaitStarted) -> st.StepState:
    wait = event.payload
    match = {"left": wait.left, "op": wait.op, "right": wait.right}
    return _opened(
        step, event, st.Waiting(kind="event", since=wait.since, due=wait.expires_at, event=wait.event, match=match)
    )


def _wait_matched(run: st.WorkflowRun, step: st.StepState, event: ev.StepWaitMatched) -> st.StepState:
    return _done(run, step, event, event.payload.data)


def _wait_timed_out(run: st.WorkflowRun, step: st.StepState, event: ev.StepWaitTimedOut) -> st.StepState:
    return _done(run, step, event, {"timeout": True})


def _waiting(run: st.WorkflowRun, step: st.StepState, event: ev.StepWaiting) -> st.StepState:
    what = event.payload
    return replace(
        step,
        waiting=st.Waiting(kind=what.kind, since=event.timestamp, due=what.due, event=what.name),
        started_at=step.started_at or event.timestamp,
        worker_id=event.worker_id or step.worker_id,
    )


# ---- sub_workflow ------------------------------------------------------------------------------


def _child_started(run: st.WorkflowRun, step: st.StepState, event: ev.ChildStarted) -> st.StepState:
    child = event.payload
    return _opened(step, event, st.Waiting(kind="child", since=event.timestamp, child_run_id=child.child_run_id))


def _child_completed(run: st.WorkflowRun, step: st.StepState, event: ev.ChildCompleted) -> st.StepState:
    return _done(run, step, event, event.payload.output)


def _child_failed(run: st.WorkflowRun, step: st.StepState, event: ev.ChildFailed) -> st.StepState:
    result = event.payload
    detail = f": {result.error}" if result.error else ""
    return _failed(step, event, f"child run {result.child_run_id} {result.status}{detail}", ev.FailureType.TRANSIENT)


# ---- map ------------------------------------------------------------------------------------------


def _map_started(run: st.WorkflowRun, step: st.StepState, event: ev.StepMapStarted) -> st.StepState:
    opened = _opened(step, event, st.Waiting(kind="instances", since=event.timestamp))
    return replace(opened, instances=tuple(st.StepState(task=step.task) for _ in range(event.payload.count)))


def _map_completed(run: st.WorkflowRun, step: st.StepState, event: ev.StepMapCompleted) -> st.StepState:
    return _done(run, step, event, [instance.output for instance in step.instances])


# ---- agent_loop ------------------------------------------------------------------------------------


def _continued(run: st.WorkflowRun, step: st.StepState, event: ev.StepContinue) -> st.StepState:
    """An iteration ended with Continue(data): ``data`` is the next iteration's input."""
    return replace(
        step,
        iterations=step.iterations + 1,
        loop_started_at=step.loop_started_at or step.queued_at,
        input=event.payload,
        finished_at=event.timestamp,
        started_at=step.started_at or event.started_at,
        worker_id=event.worker_id or step.worker_id,
    )


# ---- planner and dynamic steps -------------------------------------------------------------------


def _materialized(run: st.WorkflowRun, step: st.StepState, event: ev.PlannerMaterialized) -> st.StepState:
    ids = tuple(s.id for s in event.payload.steps)
    return replace(step, fragment=ids, waiting=st.Waiting(kind="fragment", since=event.timestamp))


def _rejected(run: st.WorkflowRun, step: st.StepState, event: ev.PlannerRejected) -> st.StepState:
    return _failed(step, event, f"invalid plan: {event.payload.text}", ev.FailureType.PERMANENT)


def _planner_completed(run: st.WorkflowRun, step: st.StepState, event: ev.PlannerCompleted) -> st.StepState:
    return _done(run, step, event, fragment_output(run, step.fragment))


def fragment_output(run: st.WorkflowRun, fragment: tuple[str, ...]) -> dict[str, Any]:
    """A planner's output once its steps ran: the outputs of the plan's last steps, by id."""
    if run.definition is None:
        return {}
    planned = [s for s in run.definition.steps if s.id in fragment]
    needed = {dep for s in planned for dep in s.depends_on}
    return {s.id: run.step(s.id).output for s in planned if s.id not in needed}


def _unchanged(run: st.WorkflowRun, step: st.StepState, event: ev.Event) -> st.StepState:
    return step


def add_steps(run: st.WorkflowRun, event: ev.PlannerMaterialized | ev.StepsAdded) -> dict[str, Any]:
    """Steps added while the run runs join its definition and its steps (a handler's only
    if they fit, and once: a retried attempt adds the same steps again)."""
    if run.definition is None:
        return {}
    if isinstance(event, ev.StepsAdded) and added_problem(
        run.definition, event.step_id, event.payload.steps, len(run.dynamic_steps)
    ):
        return {}
    known = run.definition.step_map()
    new: tuple[StepDef, ...] = tuple(s for s in event.payload.steps if s.id not in known)
    if not new:
        return {}
    definition = replace(run.definition, steps=run.definition.steps + new)
    return {
        "definition": definition,
        "steps": {**run.steps, **{s.id: st.StepState(task=s.task) for s in new}},
        "dynamic_steps": run.dynamic_steps + tuple(s.id for s in new),
    }


# ---- flow control --------------------------------------------------------------------------------


def _held(run: st.WorkflowRun, step: st.StepState, event: ev.StepHeld) -> st.StepState:
    waiting = st.Waiting(
        kind="limit", since=event.timestamp, description=event.payload.reason, limit=", ".join(event.payload.keys)
    )
    return replace(step, waiting=waiting, admitted=False, holds=())


def _limited(run: st.WorkflowRun, step: st.StepState, event: ev.StepLimited) -> st.StepState:
    waiting = limited_waiting(step.waiting, event.payload, event.timestamp)
    if waiting == step.waiting and event.payload.holds == step.holds:
        return step
    return replace(step, waiting=waiting, holds=event.payload.holds)


def limited_waiting(waiting: st.Waiting | None, limited: ev.Limited, at: str) -> st.Waiting:
    since = waiting.since if waiting is not None else at
    return st.Waiting(
        kind="limit",
        since=since,
        due=limited.until,
        description=limited.reason,
        limit=limited.key,
        position=limited.position,
    )


def _admitted(run: st.WorkflowRun, step: st.StepState, event: ev.StepAdmitted) -> st.StepState:
    return replace(step, waiting=None, admitted=True, holds=event.payload.holds)


STEP_MUTATORS: dict[type, StepMutator] = {
    ev.StepSleepStarted: _sleep_started,
    ev.StepSleepCompleted: _sleep_completed,
    ev.ApprovalRequested: _approval_requested,
    ev.ApprovalGranted: _approval_granted,
    ev.ApprovalRejected: _approval_rejected,
    ev.StepWaitStarted: _wait_started,
    ev.StepWaitMatched: _wait_matched,
    ev.StepWaitTimedOut: _wait_timed_out,
    ev.StepWaiting: _waiting,
    ev.ChildStarted: _child_started,
    ev.ChildCompleted: _child_completed,
    ev.ChildFailed: _child_failed,
    ev.StepMapStarted: _map_started,
    ev.StepMapCompleted: _map_completed,
    ev.StepContinue: _continued,
    ev.PlannerMaterialized: _materialized,
    ev.PlannerRejected: _rejected,
    ev.PlannerCompleted: _planner_completed,
    ev.StepsAdded: _unchanged,
    ev.StepHeld: _held,
    ev.StepLimited: _limited,
    ev.StepAdmitted: _admitted,
}

# Events whose step change also changes the run.
RUN_CHANGES: dict[type, RunChanges] = {
    ev.PlannerMaterialized: add_steps,
    ev.StepsAdded: add_steps,
}

# Events that complete a step (its completion order counts).
COMPLETING = frozenset(
    {
        ev.StepCompleted,
        ev.StepSleepCompleted,
        ev.ApprovalGranted,
        ev.StepWaitMatched,
        ev.StepWaitTimedOut,
        ev.ChildCompleted,
        ev.StepMapCompleted,
        ev.PlannerCompleted,
    }
)
