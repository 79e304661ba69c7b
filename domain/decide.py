"""decide(def, run, event, now) -> actions: what follows from one event.

Theory of operation: ``run`` is the state *after* folding ``event``. A
``Decision`` (decision.py) collects actions and folds each decision event it
appends into its working copy of the run, so one call can cascade. The
core's handlers below deal with worker attempts, retries, timeouts and run
control; each step type's own facts and timers go to its module in
``domain/kinds``. Everything is keyed by deterministic ids and guarded by
the state, so deciding twice on the same state asks for the same things.
``now`` is passed in; nothing here reads a clock.

``evolve`` also works out what a change of state ends: timers the state no
longer waits on (before minus after, as ``CancelTimer``), tasks still queued
for a run that ended, waiters of waits that ended, attached children of a
run that ended, and — for a child run that ended — the fact its parent waits
for.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from . import events as ev
from . import state as st
from .actions import Action, AppendEvent, CancelTimer, DiscardDeadLetters, PublishFact
from .decision import (
    DEFAULT_MAX_MESSAGE,
    STARTERS,
    Decision,
    encoded_size,
    rate_limited_delay,
    unsupported_step_type,
)
from .durations import format_duration
from .fold import fold
from .kinds import FACT_HANDLERS, RECOVERIES, TIMER_HANDLERS
from .kinds.admission import released
from .kinds.children import cancels_for_children, outcome_for_parent
from .kinds.waits import removal, waits_of
from .resolve import resolve_input
from .timers import (
    DEADLINE,
    RETRY,
    STEP_TIMEOUT,
    STICKY_CHECK,
    STICKY_CHECK_NS,
    STICKY_FALLBACK,
    add_ns,
    changed_timers,
    deadline_timer,
    step_timeout_timer,
    sticky_check_timer,
    wanted_timers,
    watches_worker,
)

__all__ = [
    "DEFAULT_MAX_MESSAGE",
    "decide",
    "encoded_size",
    "evolve",
    "recover",
    "unrecordable",
    "unsupported_step_type",
]


def decide(
    defn: Any, run: st.WorkflowRun, event: ev.Event, now: datetime, max_message: int = DEFAULT_MAX_MESSAGE
) -> list[Action]:
    if run.is_terminal or run.definition is None:
        return []
    decision = Decision(run.definition, run, now, max_message)
    handler = _HANDLERS.get(type(event))
    if handler is not None:
        handler(decision, event)
    for kind_handler in FACT_HANDLERS.get(type(event), ()):
        kind_handler(decision, event)
    decision.advance()
    return decision.actions


def recover(run: st.WorkflowRun, now: datetime, max_message: int = DEFAULT_MAX_MESSAGE) -> list[Action]:
    """Re-issue what a rebuilt run waits on: queued tasks, armed timers, waiters, child
    runs, due steps; and for a child that ended, its outcome to its parent."""
    if run.definition is None:
        return []
    if run.is_terminal:
        told = outcome_for_parent(run)
        return [told] if told is not None else []
    decision = Decision(run.definition, run, now, max_message)
    for step in run.definition.steps:
        state = run.step(step.id)
        if state.status == st.StepStatus.QUEUED:
            decision.actions.append(decision.task_for(step, state.attempts, state.input, iteration=state.iterations))
    decision.actions.extend(wanted_timers(run))
    for again in RECOVERIES:
        again(decision)
    decision.advance()
    return decision.actions


# ---- the core's handlers, one per event type ------------------------------------------------


def _on_workflow_started(d: Decision, event: ev.WorkflowStarted) -> None:
    if d.defn.timeout:
        d.actions.append(deadline_timer(d.after(int(d.defn.timeout))))


def _on_started(d: Decision, event: ev.StepStarted) -> None:
    step = d.steps.get(event.step_id)
    state = d.state_of(event.step_id, event.instance)
    if step is None or state.status != st.StepStatus.RUNNING or state.attempts != event.attempt:
        return
    if step.timeout:
        # Counted from the recorded start, as a rebuilt run's re-armed timer is.
        due = add_ns(state.started_at, int(step.timeout))
        d.actions.append(step_timeout_timer(step.id, event.attempt, due, event.instance))
    if event.instance is None and watches_worker(d.run, state):
        d.actions.append(sticky_check_timer(step.id, event.attempt, d.after(STICKY_CHECK_NS), state.worker_id))


def _on_completed(d: Decision, event: ev.Event) -> None:
    if event.instance is not None:
        return
    if d.run.step(event.step_id).replays:
        d.actions.append(DiscardDeadLetters(d.run.run_id, event.step_id))
    if d.run.status == st.RunStatus.COMPENSATING and event.step_id in d._compensation_targets():
        d.compensate_next()
    elif d._handled_by(event.step_id) is not None:
        d.recover_from(event.step_id)


def _on_failed(d: Decision, event: ev.StepFailed) -> None:
    state = d.state_of(event.step_id, event.instance)
    rate_limited = state.failure_type == ev.FailureType.RATE_LIMITED.value
    delay = rate_limited_delay(event.failure.retry_after_ms) if rate_limited else 0
    d.handle_failure(event.step_id, delay, event.instance)


def _on_replayed(d: Decision, event: ev.StepReplayed) -> None:
    """An operator replayed a failed step: its next attempt starts now (a reopened run's
    deadline, dropped when it failed, is armed again)."""
    step = d.steps.get(event.step_id)
    state = d.run.step(event.step_id)
    if step is None or state.status != st.StepStatus.RETRYING or state.attempts != event.attempt:
        return
    d.actions.extend(t for t in wanted_timers(d.run) if t.kind == DEADLINE)
    if step.type == "map" and not d.needs_admission(step):
        STARTERS["map"](d, step, resolve_input(d.run, step))
    else:
        d.start_again(step, event.attempt + 1)


def _on_resumed(d: Decision, event: ev.WorkflowResumed) -> None:
    # Timers that fired while the run was paused were ignored: arm them again.
    d.actions.extend(t for t in wanted_timers(d.run) if t.kind in _PAUSED_TIMERS)


_PAUSED_TIMERS = frozenset({RETRY, "loop_delay"})


def _on_timer(d: Decision, event: ev.TimerFired) -> None:
    fire = event.payload
    if fire.kind == DEADLINE:
        d.append(ev.WorkflowCancelled, payload=ev.RunEnd(reason="deadline exceeded"), event_id="deadline.cancelled")
        return
    handler = TIMER_HANDLERS.get(fire.kind)
    if handler is not None:
        handler(d, fire)
        return
    step = d.steps.get(fire.step_id)
    state = d.state_of(fire.step_id, fire.instance)
    if step is None or state.attempts != fire.attempt:
        return
    moving = d.run.status in (st.RunStatus.RUNNING, st.RunStatus.COMPENSATING)
    if fire.kind == RETRY and state.status == st.StepStatus.RETRYING and moving:
        d.start_again(step, fire.attempt + 1, fire.instance)
    elif fire.kind == STEP_TIMEOUT and state.status in st.IN_FLIGHT_STEP_STATUSES:
        error = f"step timeout exceeded ({format_duration(int(step.timeout))})"
        failure = ev.Failure(error=error, failure_type=ev.FailureType.TRANSIENT.value, timeout=True)
        fact = ev.fact_id("timeout", fire.step_id, fire.attempt, fire.instance)
        d.append(ev.StepFailed, fire.step_id, fire.attempt, failure, event_id=fact, instance=fire.instance)
        d.drop_tasks(step, fire.attempt, fire.instance)
        d.handle_failure(fire.step_id, instance=fire.instance)
    elif fire.kind == STICKY_CHECK and state.status == st.StepStatus.RUNNING and state.worker_id == fire.worker_id:
        if fire.worker_alive:
            d.actions.append(sticky_check_timer(fire.step_id, fire.attempt, d.after(STICKY_CHECK_NS), state.worker_id))
        else:
            d.worker_lost(step, state)
    elif fire.kind == STICKY_FALLBACK and state.status == st.StepStatus.QUEUED:
        fallback = d.task_for(step, fire.attempt, state.input, sticky=False)
        d.actions.append(msgspec.structs.replace(fallback, variant="fallback"))


# Facts that change no state but may still call for a decision.
# (steps.added: steps that do not fit change nothing, and fail the attempt that added them.)
ALWAYS_DECIDE = frozenset({ev.TimerFired, ev.StepsAdded})

_HANDLERS: dict[type, Any] = {
    ev.WorkflowStarted: _on_workflow_started,
    ev.StepStarted: _on_started,
    ev.StepCompleted: _on_completed,
    ev.StepFailed: _on_failed,
    ev.ApprovalGranted: _on_completed,
    ev.StepSleepCompleted: _on_completed,
    ev.StepWaitMatched: _on_completed,
    ev.StepWaitTimedOut: _on_completed,
    ev.ChildCompleted: _on_completed,
    ev.StepMapCompleted: _on_completed,
    ev.PlannerCompleted: _on_completed,
    ev.WorkflowResumed: _on_resumed,
    ev.TimerFired: _on_timer,
    ev.StepReplayed: _on_replayed,
}


def evolve(
    run: st.WorkflowRun, event: ev.Event, now: datetime, max_message: int = DEFAULT_MAX_MESSAGE
) -> tuple[st.WorkflowRun, list[Action]]:
    """Fold ``event``, decide, and fold the decisions: the new state and the actions."""
    folded = fold(run, event)
    if folded.definition is None or (folded is run and type(event) not in ALWAYS_DECIDE):
        return run, []
    actions = decide(folded.definition, folded, event, now, max_message)
    for action in actions:
        if isinstance(action, AppendEvent):
            folded = fold(folded, action.event)
    if folded is not run:
        actions += _ended(run, folded, event, now)
    return folded, actions


def _ended(before: st.WorkflowRun, after: st.WorkflowRun, event: ev.Event, now: datetime) -> list[Action]:
    """What the change from ``before`` to ``after`` leaves behind to clean up or announce."""
    actions: list[Action] = _ended_timers(before, after, event)
    ended_waits = {step_id for step_id, _, _ in waits_of(before)} - {step_id for step_id, _, _ in waits_of(after)}
    actions += [
        removal(step_id, waiting)
        for step_id, _, waiting in waits_of(before)
        if step_id in ended_waits and after.step(step_id).status != st.StepStatus.COMPLETED
    ]
    actions += released(before, after)
    if after.is_terminal and not before.is_terminal:
        actions += _dropped_tasks(before, after, now)
        actions += cancels_for_children(before, after)
        told: PublishFact | None = outcome_for_parent(after)
        if told is not None:
            actions.append(told)
    return actions


def _ended_timers(before: st.WorkflowRun, after: st.WorkflowRun, event: ev.Event) -> list[Action]:
    """Timers the run waited on before and no longer does (the one that just fired is gone already)."""
    fired = event.payload.timer_id if isinstance(event, ev.TimerFired) else ""
    waited, waits = changed_timers(before, after)
    wanted = {t.timer_id for t in waits}
    return [
        CancelTimer(t.timer_id, t.kind, t.step_id, t.attempt)
        for t in waited
        if t.timer_id not in wanted and t.timer_id != fired
    ]


ENDED_BY_RESULT = frozenset({st.StepStatus.COMPLETED, st.StepStatus.FAILED})


def _dropped_tasks(before: st.WorkflowRun, after: st.WorkflowRun, now: datetime) -> list[Action]:
    """A run that ended with tasks still queued: take them out of the queue.

    A step that ended by its own result (completed, or failed for good) has none:
    its worker acks the task once the result is stored, and a timed-out or failed
    map's attempts were dropped when it failed. Only steps the run's end cut short
    (cancelled, or never finished) are looked for in the queue; the search is a
    consumer on the task stream, the dearest request of a run's end."""
    if after.definition is None:
        return []
    d = Decision(after.definition, after, now)
    for step in after.definition.steps:
        state = before.step(step.id)
        if after.step(step.id).status in ENDED_BY_RESULT:
            continue
        if state.status in st.IN_FLIGHT_STEP_STATUSES or state.instances:
            d.drop_tasks(step, max([state.attempts, *(i.attempts for i in state.instances)]))
    return d.actions


def unrecordable(fact: ev.Event, size: int, limit: int) -> ev.Event | None:
    """What to record instead of a fact whose record would be ``size`` bytes, over ``limit``:
    a step's output too large to keep fails the step (running it again cannot shrink it).
    None: nothing can stand in for it (the fact is dropped)."""
    if isinstance(fact, ev.StepCompleted):
        error = f"output too large to record: {size} bytes with its decisions, over the limit of {limit} bytes"
        return ev.StepFailed(
            run_id=fact.run_id,
            step_id=fact.step_id,
            timestamp=fact.timestamp,
            trace_parent=fact.trace_parent,
            attempt=fact.attempt,
            worker_id=fact.worker_id,
            id=f"{fact.id}.too-large",
            started_at=fact.started_at,
            instance=fact.instance,
            payload=ev.Failure(error=error, failure_type=ev.FailureType.PERMANENT.value),
        )
    return None
