"""fold(run, event) -> run: the total, pure reducer over a run's history.

Theory of operation: ``fold`` dispatches on the event type to one mutator.
A mutator returns the *same object* when the event does not apply
(duplicate, stale attempt, late report, anything after a terminal state,
unknown type), so callers can tell "changed" by identity and never record
a no-op. ``replay`` is the loop. Nothing here raises on a bad event.
"""

from __future__ import annotations

from typing import Any, Iterable

import msgspec

from . import events as ev
from . import state as st
from .definition import WorkflowDef
from .transitions import ATTEMPT_OPENING, next_run_status, next_step_status

replace = msgspec.structs.replace


def fold(run: st.WorkflowRun, event: ev.Event) -> st.WorkflowRun:
    if event.type == ev.WORKFLOW_STARTED:
        return _started(run, event)
    if run.definition is None or run.is_terminal:
        return run
    if event.type.startswith("workflow."):
        return _run_event(run, event)
    if event.step_id:
        return _step_event(run, event)
    return run


def replay(events: Iterable[ev.Event], run: st.WorkflowRun | None = None) -> st.WorkflowRun:
    for event in events:
        if run is None:
            run = st.new_run(event.run_id)
        run = fold(run, event)
    return run if run is not None else st.new_run("")


def _started(run: st.WorkflowRun, event: ev.Event) -> st.WorkflowRun:
    if run.definition is not None or not isinstance(event.payload, dict):
        return run
    try:
        definition = msgspec.convert(event.payload.get("workflow_def"), WorkflowDef)
    except (msgspec.ValidationError, TypeError):
        return run
    return replace(
        run,
        workflow=definition.name,
        status=st.RUN_RUNNING,
        steps={step.id: st.StepState(task=step.task) for step in definition.steps},
        input=event.payload.get("input"),
        created_at=event.timestamp,
        started_at=event.timestamp,
        trace_parent=event.trace_parent,
        definition=definition,
    )


def _run_event(run: st.WorkflowRun, event: ev.Event) -> st.WorkflowRun:
    status = next_run_status(run.status, event.type)
    if status is None:
        return run
    payload = event.payload if isinstance(event.payload, dict) else {}
    changes: dict[str, Any] = {"status": status}
    if status in st.TERMINAL_RUN_STATUSES:
        changes["completed_at"] = event.timestamp
    if event.type == ev.WORKFLOW_COMPLETED:
        changes["output"] = payload.get("output")
    elif event.type == ev.WORKFLOW_COMPENSATING:
        changes["compensation"] = tuple(payload.get("chain") or ())
        changes["trigger_step"] = str(payload.get("trigger_step") or "")
        changes["trigger_error"] = str(payload.get("trigger_error") or "")
    elif status in st.TERMINAL_RUN_STATUSES:
        changes["error"] = str(payload.get("error") or payload.get("reason") or "")
    if event.type == ev.WORKFLOW_CANCELLED:
        changes["steps"] = _cancel_unfinished(run.steps, event.timestamp)
    return replace(run, **changes)


def _cancel_unfinished(steps: dict[str, st.StepState], at: str) -> dict[str, st.StepState]:
    return {
        sid: s if s.status in st.TERMINAL_STEP_STATUSES else replace(s, status=st.STEP_CANCELLED, finished_at=at)
        for sid, s in steps.items()
    }


def _step_event(run: st.WorkflowRun, event: ev.Event) -> st.WorkflowRun:
    step = run.steps.get(event.step_id)
    if step is None:
        return run
    status = next_step_status(step.status, event.type)
    if status is None or not _attempt_applies(step, event):
        return run
    updated = _STEP_MUTATORS[event.type](run, replace(step, status=status), event)
    changes: dict[str, Any] = {"steps": {**run.steps, event.step_id: updated}}
    if event.type == ev.STEP_COMPLETED:
        changes["completions"] = updated.completed_order
    if event.type in _BINDING and event.worker_id and run.definition and run.definition.sticky:
        # A sticky run is bound to the worker that first reports on one of its steps; a
        # soft one follows the worker that completed its latest step (after a fallback).
        soft_move = run.definition.sticky == "soft" and event.type == ev.STEP_COMPLETED
        if not run.sticky_worker or soft_move:
            changes["sticky_worker"] = event.worker_id
    return replace(run, **changes)


_BINDING = frozenset({ev.STEP_STARTED, ev.STEP_COMPLETED, ev.STEP_FAILED})


def _attempt_applies(step: st.StepState, event: ev.Event) -> bool:
    if event.type in ATTEMPT_OPENING:
        return event.attempt > step.attempts
    if event.type in (ev.STEP_SKIPPED, ev.STEP_RECOVERED):
        return True
    return event.attempt == step.attempts


def _queued(run: st.WorkflowRun, step: st.StepState, event: ev.Event) -> st.StepState:
    payload = event.payload if isinstance(event.payload, dict) else {}
    return replace(
        step,
        attempts=event.attempt,
        input=payload.get("input"),
        task=payload.get("task", step.task),
        queued_at=event.timestamp,
        started_at="",
        retry_at="",
    )


def _started_step(run: st.WorkflowRun, step: st.StepState, event: ev.Event) -> st.StepState:
    return replace(step, started_at=event.timestamp, worker_id=event.worker_id)


def _completed(run: st.WorkflowRun, step: st.StepState, event: ev.Event) -> st.StepState:
    return replace(
        step, output=event.payload, error="", failure_type="", finished_at=event.timestamp,
        worker_id=event.worker_id or step.worker_id, completed_order=run.completions + 1,
        started_at=step.started_at or event.started_at,
    )


def _failed(run: st.WorkflowRun, step: st.StepState, event: ev.Event) -> st.StepState:
    payload = event.payload if isinstance(event.payload, dict) else {"error": event.payload}
    limit = run.definition.max_step_error_bytes if run.definition else 4096
    return replace(
        step,
        error=truncate_utf8(str(payload.get("error") or "failed"), limit),
        failure_type=ev.FailureType.parse(payload.get("failure_type")).value,
        finished_at=event.timestamp,
        started_at=step.started_at or event.started_at,
        worker_id=event.worker_id or step.worker_id,
    )


def _retry_scheduled(run: st.WorkflowRun, step: st.StepState, event: ev.Event) -> st.StepState:
    payload = event.payload if isinstance(event.payload, dict) else {}
    return replace(step, retry_at=str(payload.get("retry_at", "")))


def _skipped(run: st.WorkflowRun, step: st.StepState, event: ev.Event) -> st.StepState:
    payload = event.payload if isinstance(event.payload, dict) else {}
    return replace(step, finished_at=event.timestamp, skip_reason=str(payload.get("reason") or ""),
                   skip_cascade=bool(payload.get("cascade")))


def _recovered(run: st.WorkflowRun, step: st.StepState, event: ev.Event) -> st.StepState:
    return replace(step, finished_at=event.timestamp)


_STEP_MUTATORS = {
    ev.STEP_QUEUED: _queued,
    ev.STEP_STARTED: _started_step,
    ev.STEP_COMPLETED: _completed,
    ev.STEP_FAILED: _failed,
    ev.STEP_RETRY_SCHEDULED: _retry_scheduled,
    ev.STEP_SKIPPED: _skipped,
    ev.STEP_RECOVERED: _recovered,
}


def truncate_utf8(text: str, limit: int) -> str:
    """Cut ``text`` to at most ``limit`` UTF-8 bytes without splitting a character."""
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[:limit].decode(errors="ignore")
