"""sub_workflow: the step starts a child run of another workflow and ends as it ends.

The child's id is derived from (parent run, step, attempt), so starting it
again after a crash finds the same run. It is started through the same
admission as any run (its own concurrency, singleton and input schema apply)
and carries its parent's ids; when it ends, its engine puts
``workflow.child.completed`` (with its output) or ``workflow.child.failed``
into the parent's inbox. A failed child fails the parent step, which the
step's retry policy may retry with a new child. A parent that ends cancels
its attached children. ``detach: true`` completes the parent step at once
with ``{"child_run_id": ...}``; the child then runs on its own, as a root.
"""

from __future__ import annotations

import hashlib
from typing import Any

from .. import events as ev
from .. import state as st
from ..actions import PublishFact, StartChildRun
from ..decision import STARTERS, Decision
from ..definition import StepDef, SubWorkflowConfig
from ..resolve import resolve_input
from . import on_fact, on_recover

# A root run is depth 0: at most this many levels of children below it.
MAX_DEPTH = 5


def child_run_id(run_id: str, step_id: str, attempt: int) -> str:
    return hashlib.sha256(f"{run_id}.{step_id}.{attempt}".encode()).hexdigest()[:32]


def start(d: Decision, step: StepDef, data: Any) -> None:
    config = step.parsed_config()
    assert isinstance(config, SubWorkflowConfig)
    if d.run.depth + 1 > MAX_DEPTH and not config.detach:
        d.reject(step, f"sub_workflow: nesting deeper than {MAX_DEPTH} levels (this run is at level {d.run.depth})")
        return
    attempt = d.run.step(step.id).attempts + 1
    child = child_run_id(d.run.run_id, step.id, attempt)
    d.append(
        ev.ChildStarted, step.id, attempt, ev.Child(child_run_id=child, workflow=config.workflow, detach=config.detach)
    )
    d.actions.append(start_child(d.run, child, config, data, step.id, attempt))
    if config.detach:
        done = ev.ChildResult(child_run_id=child, status="started", output={"child_run_id": child})
        d.append(ev.ChildCompleted, step.id, attempt, done)


def start_child(
    run: st.WorkflowRun, child: str, config: SubWorkflowConfig, data: Any, step_id: str, attempt: int
) -> StartChildRun:
    if config.detach:
        return StartChildRun(
            child,
            config.workflow,
            data,
            step_id,
            attempt,
            detach=True,
            trace_state=run.trace_state,
            baggage=run.baggage,
        )
    return StartChildRun(
        child,
        config.workflow,
        data,
        step_id,
        attempt,
        root_run_id=run.root,
        depth=run.depth + 1,
        trace_state=run.trace_state,
        baggage=run.baggage,
    )


@on_fact(ev.ChildFailed)
def _failed(d: Decision, event: ev.ChildFailed) -> None:
    d.handle_failure(event.step_id)


def outcome_for_parent(run: st.WorkflowRun) -> PublishFact | None:
    """What an attached child that ended tells its parent."""
    if not run.parent_run_id or not run.is_terminal:
        return None
    result = ev.ChildResult(child_run_id=run.run_id, status=str(run.status), output=run.output, error=run.error)
    cls: type[ev.EventBase] = ev.ChildCompleted if run.status == st.RunStatus.COMPLETED else ev.ChildFailed
    fact = cls(
        run_id=run.parent_run_id,
        step_id=run.parent_step_id,
        attempt=run.parent_attempt,
        timestamp=run.completed_at,
        trace_parent=run.trace_parent,
        payload=result,
        id=f"child.{run.run_id}.ended",
    )
    return PublishFact(fact)  # type: ignore[arg-type]


def cancels_for_children(before: st.WorkflowRun, after: st.WorkflowRun) -> list[PublishFact]:
    """A run that ended cancels the attached children it was waiting for."""
    if not after.is_terminal or before.is_terminal:
        return []
    facts = []
    for state in before.steps.values():
        waiting = state.waiting
        if state.status == st.StepStatus.RUNNING and waiting is not None and waiting.kind == "child":
            reason = f"its parent run {after.run_id} {after.status}"
            cancel = ev.WorkflowCancelled(
                run_id=waiting.child_run_id,
                timestamp=after.completed_at,
                payload=ev.RunEnd(reason=reason),
                id=f"parent.{after.run_id}.ended",
            )
            facts.append(PublishFact(cancel))
    return facts


@on_recover
def _start_again(d: Decision) -> None:
    """A rebuilt run asks again for the children it waits on (found, if they started)."""
    for step_id, state in d.run.steps.items():
        waiting = state.waiting
        if state.status != st.StepStatus.RUNNING or waiting is None or waiting.kind != "child":
            continue
        step = d.steps[step_id]
        config = step.parsed_config()
        assert isinstance(config, SubWorkflowConfig)
        data = resolve_input(d.run, step)  # the same as when it started: its inputs have not changed
        d.actions.append(start_child(d.run, waiting.child_run_id, config, data, step_id, state.attempts))


STARTERS["sub_workflow"] = start
