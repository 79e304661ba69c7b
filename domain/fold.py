"""fold(run, event) -> run: the total, pure reducer over a run's history.

Theory of operation: ``fold`` dispatches on the event's class to one
mutator. A mutator returns the *same object* when the event does not apply
(duplicate, stale attempt, late report, anything after a terminal state but
an operator's replay and a repeated start's trace link),
so callers can tell "changed" by identity and never record a no-op.
``replay`` is the loop. Nothing here raises on a bad event.

Inputs and outputs may be recorded by reference (``Queued.input_from``,
``RunOutput.output_from_sinks``): the value is then rebuilt from the state
the run has at that point of its history, exactly as ``decide`` computed it,
so a large value is never recorded twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from . import events as ev
from . import state as st
from .replays import replay_problem
from .resolve import compensation_context, failure_context, resolve_input, run_output
from .step_states import COMPLETING, RUN_CHANGES, STEP_MUTATORS, limited_waiting
from .transitions import ADMISSION, ATTEMPT_OPENING, next_run_status, next_step_status

replace = msgspec.structs.replace

# Queued.input_from: where a step's input comes from when it is not recorded inline.
INPUT_FROM_WIRING = "wiring"  # what the step's wiring resolves to now
INPUT_FROM_PREVIOUS = "previous"  # the input of the step's previous attempt
INPUT_FROM_ON_FAILURE = "on_failure"  # the context of the failure this handler handles
INPUT_FROM_COMPENSATION = "compensation"  # the context of the step this one undoes


def ahead_of(run: st.WorkflowRun, event: ev.Event) -> bool:
    """A worker's report on an attempt this state has not seen open: the record that
    dispatched it is not in the history yet (another engine is writing it). Folding it now
    would drop it; it is worth delivering again once that record is there. That includes a
    run whose start is not recorded at all: a task goes out with the record that dispatches
    it, so an engine that died before that record landed left the task running."""
    if not event.worker_id or not event.step_id or run.is_terminal:
        return False
    if run.definition is None:
        return True
    step = run.steps.get(event.step_id)
    if step is None:
        return False
    if event.instance is not None:
        state = step.instances[event.instance] if event.instance < len(step.instances) else st.StepState()
    else:
        state = step
    return event.attempt > state.attempts


def fold(run: st.WorkflowRun, event: ev.Event) -> st.WorkflowRun:
    if isinstance(event, ev.WorkflowStarted):
        return _started(run, event)
    if isinstance(event, ev.StepReplayed):
        return _replayed(run, event)
    if isinstance(event, ev.WorkflowStartRepeated):
        return _start_repeated(run, event)
    if run.definition is None or run.is_terminal:
        return run
    mutator = _RUN_MUTATORS.get(type(event))
    if mutator is not None:
        return _run_event(run, event, mutator)
    if event.step_id:
        return _step_event(run, event)
    return run


def replay(events: Iterable[ev.Event], run: st.WorkflowRun | None = None) -> st.WorkflowRun:
    for event in events:
        if run is None:
            run = st.new_run(event.run_id)
        run = fold(run, event)
    return run if run is not None else st.new_run("")


MAX_LINKED_STARTS = 32


def _start_repeated(run: st.WorkflowRun, event: ev.WorkflowStartRepeated) -> st.WorkflowRun:
    """A start answered with this run links the caller's trace, even to a run that ended
    (the link is about the caller, not the run's progress); once per caller, and only so many."""
    caller = event.payload.caller
    if run.definition is None or not caller or caller in run.linked_starts:
        return run
    if len(run.linked_starts) >= MAX_LINKED_STARTS:
        return run
    return replace(run, linked_starts=(*run.linked_starts, caller))


def _replayed(run: st.WorkflowRun, event: ev.StepReplayed) -> st.WorkflowRun:
    """An operator's replay of the step a failed run failed on reopens the run: the step
    waits for its next attempt, as after a retry (replays.py says when it applies)."""
    step = run.steps.get(event.step_id)
    if step is None or event.attempt != step.attempts or replay_problem(run, event.step_id):
        return run
    status = next_step_status(step.status, event.type)
    if status is None:
        return run
    updated = replace(step, status=status, replays=step.replays + 1, retry_at=event.timestamp)
    steps = {**run.steps, event.step_id: updated}
    return replace(run, status=st.RunStatus.RUNNING, error="", completed_at="", steps=steps)


def _started(run: st.WorkflowRun, event: ev.WorkflowStarted) -> st.WorkflowRun:
    if run.definition is not None or event.payload is None:
        return run
    definition = event.payload.workflow_def
    limited = definition.concurrency is not None and definition.concurrency.max_runs > 0
    return replace(
        run,
        workflow=definition.name,
        status=st.RunStatus.PENDING if limited else st.RunStatus.RUNNING,
        steps={step.id: st.StepState(task=step.task) for step in definition.steps},
        input=event.payload.input,
        created_at=event.timestamp,
        started_at=event.timestamp,
        trace_parent=event.trace_parent,
        trace_state=event.payload.trace_state,
        baggage=event.payload.baggage,
        definition=definition,
        parent_run_id=event.payload.parent_run_id,
        parent_step_id=event.payload.parent_step_id,
        parent_attempt=event.payload.parent_attempt,
        root_run_id=event.payload.root_run_id,
        depth=event.payload.depth,
    )


# ---- run events -------------------------------------------------------------------------

RunChanges = dict[str, Any]


def _run_event(
    run: st.WorkflowRun, event: ev.Event, mutator: Callable[[st.WorkflowRun, Any], RunChanges]
) -> st.WorkflowRun:
    status = next_run_status(run.status, event.type)
    if status is None:
        return run
    changes: RunChanges = {"status": status, **mutator(run, event)}
    if status.is_terminal:
        changes.update(completed_at=event.timestamp, holds=(), waiting=None)
    if all(getattr(run, name) == value for name, value in changes.items()):
        return run
    return replace(run, **changes)


def _no_change(run: st.WorkflowRun, event: ev.Event) -> RunChanges:
    return {}


def _completed_run(run: st.WorkflowRun, event: ev.WorkflowCompleted) -> RunChanges:
    payload = event.payload
    output = run_output(run.definition, run) if payload.output_from_sinks and run.definition else payload.output
    return {"output": output}


def _ended(
    run: st.WorkflowRun, event: ev.WorkflowFailed | ev.WorkflowCompensated | ev.WorkflowCompensateFailed
) -> RunChanges:
    return {"error": event.payload.text}


def _cancelled(run: st.WorkflowRun, event: ev.WorkflowCancelled) -> RunChanges:
    return {"error": event.payload.text, "steps": _cancel_unfinished(run.steps, event.timestamp)}


def _compensating(run: st.WorkflowRun, event: ev.WorkflowCompensating) -> RunChanges:
    payload = event.payload
    return {
        "compensation": tuple(payload.chain),
        "trigger_step": payload.trigger_step,
        "trigger_error": payload.trigger_error,
    }


def _cancel_unfinished(steps: dict[str, st.StepState], at: str) -> dict[str, st.StepState]:
    return {
        sid: s
        if s.status in st.TERMINAL_STEP_STATUSES
        else replace(s, status=st.StepStatus.CANCELLED, finished_at=at, holds=(), admitted=False, waiting=None)
        for sid, s in steps.items()
    }


def _run_limited(run: st.WorkflowRun, event: ev.RunLimited) -> RunChanges:
    return {"waiting": limited_waiting(run.waiting, event.payload, event.timestamp), "holds": event.payload.holds}


def _run_admitted(run: st.WorkflowRun, event: ev.RunAdmitted) -> RunChanges:
    return {"waiting": None, "holds": event.payload.holds}


_RUN_MUTATORS: dict[type, Callable[[st.WorkflowRun, Any], RunChanges]] = {
    ev.RunLimited: _run_limited,
    ev.RunAdmitted: _run_admitted,
    ev.WorkflowCompleted: _completed_run,
    ev.WorkflowFailed: _ended,
    ev.WorkflowCancelled: _cancelled,
    ev.WorkflowPauseRequested: _no_change,
    ev.WorkflowPaused: _no_change,
    ev.WorkflowResumed: _no_change,
    ev.WorkflowCompensating: _compensating,
    ev.WorkflowCompensated: _ended,
    ev.WorkflowCompensateFailed: _ended,
}


# ---- step events --------------------------------------------------------------------------


def _step_event(run: st.WorkflowRun, event: ev.Event) -> st.WorkflowRun:
    step = run.steps.get(event.step_id)
    mutator = _STEP_MUTATORS.get(type(event))
    if step is None or mutator is None:
        return run
    if event.instance is not None:
        return _instance_event(run, step, event, mutator)
    status = next_step_status(step.status, event.type)
    if status is None or not _attempt_applies(step, event):
        return run
    updated = mutator(run, step if status == step.status else replace(step, status=status), event)
    if updated.holds and updated.status not in st.HOLDING_STEP_STATUSES:
        updated = replace(updated, holds=(), admitted=False)  # the attempt ended: its slots are free
    extra = RUN_CHANGES[type(event)](run, event) if type(event) in RUN_CHANGES else {}
    if updated is step and not extra:
        return run
    changes: dict[str, Any] = {**extra, "steps": {**extra.get("steps", run.steps), event.step_id: updated}}
    if type(event) in COMPLETING:
        changes["completions"] = updated.completed_order
    if type(event) in _BINDING and event.worker_id and run.definition and run.definition.sticky:
        # A sticky run is bound to the worker that first reports on one of its steps; a
        # soft one follows the worker that completed its latest step (after a fallback).
        soft_move = run.definition.sticky == "soft" and isinstance(event, ev.StepCompleted)
        if not run.sticky_worker or soft_move:
            changes["sticky_worker"] = event.worker_id
    return replace(run, **changes)


_BINDING = frozenset({ev.StepStarted, ev.StepCompleted, ev.StepFailed})


def _instance_event(
    run: st.WorkflowRun,
    step: st.StepState,
    event: ev.Event,
    mutator: Callable[[st.WorkflowRun, st.StepState, Any], st.StepState],
) -> st.WorkflowRun:
    """A fact about one instance of a running map step: the same rules as for a step."""
    index = event.instance
    if step.status != st.StepStatus.RUNNING or index is None or not 0 <= index < len(step.instances):
        return run
    instance = step.instances[index]
    status = next_step_status(instance.status, event.type)
    if status is None or not _attempt_applies(instance, event):
        return run
    updated = mutator(run, instance if status == instance.status else replace(instance, status=status), event)
    if updated.holds and updated.status not in st.HOLDING_STEP_STATUSES:
        updated = replace(updated, holds=(), admitted=False)
    if updated is instance:
        return run
    instances = step.instances[:index] + (updated,) + step.instances[index + 1 :]
    return replace(run, steps={**run.steps, event.step_id: replace(step, instances=instances)})


def _attempt_applies(step: st.StepState, event: ev.Event) -> bool:
    if event.type in ATTEMPT_OPENING:
        return event.attempt > step.attempts
    if event.type in ADMISSION:
        return event.attempt == step.attempts + 1
    if isinstance(event, (ev.StepSkipped, ev.StepRecovered)):
        return True
    return event.attempt == step.attempts


def _queued(run: st.WorkflowRun, step: st.StepState, event: ev.StepQueued) -> st.StepState:
    payload = event.payload
    return replace(
        step,
        attempts=event.attempt,
        input=queued_input(run, event, step, payload),
        task=payload.task or step.task,
        queued_at=event.timestamp,
        started_at="",
        finished_at="",
        retry_at="",
    )


def queued_input(run: st.WorkflowRun, event: ev.StepQueued, step: st.StepState, payload: ev.Queued) -> Any:
    """The input a ``step.queued`` event gives its attempt (inline, or by reference)."""
    source, defn, step_id = payload.input_from, run.definition, event.step_id
    if not source or defn is None:
        return payload.input
    if source == INPUT_FROM_PREVIOUS:
        return step.input
    try:
        if source == INPUT_FROM_WIRING and event.instance is not None:
            return resolve_input(run, defn.step(step_id))[event.instance]
        if source == INPUT_FROM_WIRING:
            return resolve_input(run, defn.step(step_id))
        if source == INPUT_FROM_ON_FAILURE:
            return failure_context(defn, run, step_id)
        if source == INPUT_FROM_COMPENSATION:
            return compensation_context(defn, run, step_id)
    except Exception:  # noqa: BLE001 - total: a history decide wrote resolves; a forged one must not crash
        return None
    return payload.input


def _started_step(run: st.WorkflowRun, step: st.StepState, event: ev.StepStarted) -> st.StepState:
    return replace(step, started_at=event.timestamp, worker_id=event.worker_id)


def _completed(run: st.WorkflowRun, step: st.StepState, event: ev.StepCompleted) -> st.StepState:
    return replace(
        step,
        output=event.payload,
        error="",
        failure_type="",
        finished_at=event.timestamp,
        worker_id=event.worker_id or step.worker_id,
        completed_order=run.completions + 1,
        started_at=step.started_at or event.started_at,
        waiting=None,
    )


def _failed(run: st.WorkflowRun, step: st.StepState, event: ev.StepFailed) -> st.StepState:
    failure = event.failure
    limit = run.definition.max_step_error_bytes if run.definition else 4096
    return replace(
        step,
        error=truncate_utf8(failure.error or "failed", limit),
        failure_type=ev.FailureType.parse(failure.failure_type).value,
        finished_at=event.timestamp,
        started_at=step.started_at or event.started_at,
        worker_id=event.worker_id or step.worker_id,
        waiting=None,
    )


def _retry_scheduled(run: st.WorkflowRun, step: st.StepState, event: ev.StepRetryScheduled) -> st.StepState:
    return replace(step, retry_at=event.payload.retry_at)


def _skipped(run: st.WorkflowRun, step: st.StepState, event: ev.StepSkipped) -> st.StepState:
    return replace(
        step, finished_at=event.timestamp, skip_reason=event.payload.reason, skip_cascade=event.payload.cascade
    )


def _recovered(run: st.WorkflowRun, step: st.StepState, event: ev.StepRecovered) -> st.StepState:
    return replace(step, finished_at=event.timestamp)


_STEP_MUTATORS: dict[type, Callable[[st.WorkflowRun, st.StepState, Any], st.StepState]] = {
    ev.StepQueued: _queued,
    ev.StepStarted: _started_step,
    ev.StepCompleted: _completed,
    ev.StepFailed: _failed,
    ev.StepRetryScheduled: _retry_scheduled,
    ev.StepSkipped: _skipped,
    ev.StepRecovered: _recovered,
    **STEP_MUTATORS,
}


def truncate_utf8(text: str, limit: int) -> str:
    """Cut ``text`` to at most ``limit`` UTF-8 bytes without splitting a character."""
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[:limit].decode(errors="ignore")
