"""decide(def, run, event, now) -> actions: what follows from one event.

Theory of operation: ``run`` is the state *after* folding ``event``. A
``Decision`` collects actions and folds each decision event it appends into
its working copy of the run, so one call can cascade (a failure schedules
a retry; a completion dispatches the next steps and completes the run).
Everything is keyed by deterministic ids and guarded by the state, so
deciding twice on the same state asks for the same things. ``now`` is
passed in; nothing here reads a clock.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from . import events as ev
from . import state as st
from .actions import Action, AppendEvent, EnqueueTask
from .definition import StepDef, WorkflowDef
from .durations import HOUR, MILLISECOND, format_duration
from .fold import fold
from .resolve import is_complete, ready_steps, resolve_input, run_output
from .retry import calculate_delay, may_retry, resolve_retry_policy
from .timers import RETRY, STEP_TIMEOUT, retry_timer, step_timeout_timer, wanted_timers


def decide(defn: WorkflowDef, run: st.WorkflowRun, event: ev.Event, now: datetime) -> list[Action]:
    if run.is_terminal or run.definition is None:
        return []
    decision = Decision(defn, run, now)
    handler = _HANDLERS.get(event.type)
    if handler is not None:
        handler(decision, event)
    decision.advance()
    return decision.actions


def recover(run: st.WorkflowRun, now: datetime) -> list[Action]:
    """Re-issue what a rebuilt run waits on: queued tasks, armed timers, due steps."""
    if run.is_terminal or run.definition is None:
        return []
    decision = Decision(run.definition, run, now)
    for step in run.definition.steps:
        state = run.step(step.id)
        if state.status == st.STEP_QUEUED:
            decision.actions.append(decision.task_for(step, state.attempts, state.input))
    decision.actions.extend(wanted_timers(run))
    decision.advance()
    return decision.actions


class Decision:
    def __init__(self, defn: WorkflowDef, run: st.WorkflowRun, now: datetime) -> None:
        self.defn, self.run, self.now = defn, run, now
        self.stamp = ev.format_timestamp(now)
        self.actions: list[Action] = []
        self._steps = defn.step_map()

    # ---- recording -------------------------------------------------------

    def append(self, event_type: str, step_id: str = "", attempt: int = 0, payload: Any = None,
               event_id: str = "") -> None:
        event = ev.Event(
            type=event_type, run_id=self.run.run_id, step_id=step_id, timestamp=self.stamp,
            payload=payload, trace_parent=self.run.trace_parent, attempt=attempt,
            id=event_id or ev.fact_id(event_type, step_id, attempt),
        )
        self.run = fold(self.run, event)
        self.actions.append(AppendEvent(event))

    # ---- dispatch --------------------------------------------------------------

    def dispatch(self, step: StepDef, attempt: int) -> None:
        data = resolve_input(self.run, step)
        self.append(ev.STEP_QUEUED, step.id, attempt, {"task": step.task, "input": data})
        self.actions.append(self.task_for(step, attempt, data))

    def task_for(self, step: StepDef, attempt: int, data: Any) -> EnqueueTask:
        payload = ev.TaskPayload(
            task_id=f"{self.run.run_id}.{step.id}", run_id=self.run.run_id, step_id=step.id,
            attempt=attempt, input=data, task=step.task, workflow_name=self.defn.name,
            timeout_ns=int(step.timeout), traceparent=self.run.trace_parent,
        )
        return EnqueueTask(task=step.task, payload=payload, group=step.worker_group)

    def advance(self) -> None:
        if self.run.status != st.RUN_RUNNING:
            return
        for step in ready_steps(self.defn, self.run):
            self.dispatch(step, 1)
        if is_complete(self.defn, self.run):
            self.append(ev.WORKFLOW_COMPLETED, payload={"output": run_output(self.defn, self.run)})

    # ---- failures ------------------------------------------------------------------

    def handle_failure(self, step_id: str, retry_after_ns: int = 0) -> None:
        state = self.run.step(step_id)
        if state.status != st.STEP_FAILED:
            return
        step = self._steps[step_id]
        policy = resolve_retry_policy(self.defn, step)
        if state.failure_type != ev.FailureType.PERMANENT.value and may_retry(policy, state.attempts):
            delay = retry_after_ns or calculate_delay(policy, state.attempts)
            self.schedule_retry(step, state, delay)
            return
        self.fail_run(step_id, state)

    def schedule_retry(self, step: StepDef, state: st.StepState, delay_ns: int) -> None:
        due = ev.format_timestamp(self.now + timedelta(microseconds=delay_ns // 1000))
        self.append(ev.STEP_RETRY_SCHEDULED, step.id, state.attempts,
                    {"retry_at": due, "delay_ms": delay_ns // MILLISECOND, "error": state.error})
        self.actions.append(retry_timer(step.id, state.attempts, due))

    def fail_run(self, step_id: str, state: st.StepState) -> None:
        attempts = f" after {state.attempts} attempts" if state.attempts > 1 else ""
        self.append(ev.WORKFLOW_FAILED, step_id=step_id,
                    payload={"error": f"step {step_id} failed{attempts}: {state.error}"})


# ---- handlers, one per event type -----------------------------------------------------


def _on_started(d: Decision, event: ev.Event) -> None:
    step = d._steps.get(event.step_id)
    state = d.run.step(event.step_id)
    if step is None or not step.timeout or state.status != st.STEP_RUNNING or state.attempts != event.attempt:
        return
    due = ev.format_timestamp(d.now + timedelta(microseconds=int(step.timeout) // 1000))
    d.actions.append(step_timeout_timer(step.id, event.attempt, due))


def _on_failed(d: Decision, event: ev.Event) -> None:
    rate_limited = d.run.step(event.step_id).failure_type == ev.FailureType.RATE_LIMITED.value
    d.handle_failure(event.step_id, rate_limited_delay(event.payload) if rate_limited else 0)


def _on_timer(d: Decision, event: ev.Event) -> None:
    payload = event.payload if isinstance(event.payload, dict) else {}
    kind, step_id, attempt = payload.get("kind"), payload.get("step_id", ""), payload.get("attempt", 0)
    step = d._steps.get(step_id)
    state = d.run.step(step_id)
    if step is None or state.attempts != attempt:
        return
    if kind == RETRY and state.status == st.STEP_RETRYING:
        d.dispatch(step, attempt + 1)
    elif kind == STEP_TIMEOUT and state.status in st.IN_FLIGHT_STEP_STATUSES:
        error = f"step timeout exceeded ({format_duration(int(step.timeout))})"
        d.append(ev.STEP_FAILED, step_id, attempt,
                 {"error": error, "failure_type": ev.FailureType.TRANSIENT.value, "timeout": True},
                 event_id=f"{step_id}.{attempt}.timeout")
        d.handle_failure(step_id)


def rate_limited_delay(payload: Any) -> int:
    ms = payload.get("retry_after_ms", 0) if isinstance(payload, dict) else 0
    return min(max(int(ms or 0) * MILLISECOND, 100 * MILLISECOND), HOUR)


# Facts that change no state but may still call for a decision.
ALWAYS_DECIDE = frozenset({ev.TIMER_FIRED})

_HANDLERS = {
    ev.STEP_STARTED: _on_started,
    ev.STEP_FAILED: _on_failed,
    ev.TIMER_FIRED: _on_timer,
}


def evolve(run: st.WorkflowRun, event: ev.Event, now: datetime) -> tuple[st.WorkflowRun, list[Action]]:
    """Fold ``event``, decide, and fold the decisions: the new state and the actions."""
    folded = fold(run, event)
    if folded.definition is None or (folded is run and event.type not in ALWAYS_DECIDE):
        return run, []
    actions = decide(folded.definition, folded, event, now)
    for action in actions:
        if isinstance(action, AppendEvent):
            folded = fold(folded, action.event)
    return folded, actions
