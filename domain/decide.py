"""decide(def, run, event, now) -> actions: what follows from one event.

Theory of operation: ``run`` is the state *after* folding ``event``. A
``Decision`` collects actions and folds each decision event it appends into
its working copy of the run, so one call can cascade (a failure schedules
a retry or starts a saga; a completion dispatches the next steps, skips
what must be skipped, and completes the run). Everything is keyed by
deterministic ids and guarded by the state, so deciding twice on the same
state asks for the same things. ``now`` is passed in; nothing here reads a
clock.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from . import conditions, templates
from . import events as ev
from . import state as st
from .actions import Action, AppendEvent, EnqueueTask
from .definition import EXECUTED_STEP_TYPES, StepDef, WorkflowDef
from .durations import HOUR, MILLISECOND, format_duration
from .fold import fold
from .identifiers import is_identifier
from .resolve import failed_upstream, is_complete, ready_steps, resolve_input, run_output
from .retry import calculate_delay, may_retry, resolve_retry_policy
from .timers import (
    DEADLINE, RETRY, STEP_TIMEOUT, STICKY_CHECK, STICKY_CHECK_NS, STICKY_FALLBACK, STICKY_FALLBACK_NS, add_ns,
    deadline_timer, retry_timer, step_timeout_timer, sticky_check_timer, sticky_fallback_timer, wanted_timers,
    watches_worker,
)


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
        self.steps = defn.step_map()

    def after(self, ns: int) -> str:
        return ev.format_timestamp(self.now + timedelta(microseconds=ns // 1000))

    # ---- recording ---------------------------------------------------------------

    def append(self, event_type: str, step_id: str = "", attempt: int = 0, payload: Any = None,
               event_id: str = "") -> None:
        event = ev.Event(
            type=event_type, run_id=self.run.run_id, step_id=step_id, timestamp=self.stamp,
            payload=payload, trace_parent=self.run.trace_parent, attempt=attempt,
            id=event_id or ev.fact_id(event_type, step_id, attempt),
        )
        self.run = fold(self.run, event)
        self.actions.append(AppendEvent(event))

    # ---- dispatch ------------------------------------------------------------------

    def dispatch(self, step: StepDef, attempt: int, data: Any, sticky: bool = True) -> None:
        self.append(ev.STEP_QUEUED, step.id, attempt, {"task": step.task, "input": data})
        task = self.task_for(step, attempt, data, sticky)
        self.actions.append(task)
        if task.group.startswith("sticky-") and self.defn.sticky == "soft":
            self.actions.append(sticky_fallback_timer(step.id, attempt, self.after(STICKY_FALLBACK_NS)))

    def task_for(self, step: StepDef, attempt: int, data: Any, sticky: bool = True) -> EnqueueTask:
        payload = ev.TaskPayload(
            task_id=f"{self.run.run_id}.{step.id}", run_id=self.run.run_id, step_id=step.id,
            attempt=attempt, input=data, task=step.task, workflow_name=self.defn.name,
            timeout_ns=int(step.timeout), traceparent=self.run.trace_parent,
        )
        group = step.worker_group
        worker = self.run.sticky_worker
        if sticky and self.defn.sticky and worker and is_identifier(f"sticky-{worker}"):
            group = f"sticky-{worker}"
        return EnqueueTask(task=step.task, payload=payload, group=group)

    def skip(self, step: StepDef, reason: str, cascade: bool) -> None:
        self.append(ev.STEP_SKIPPED, step.id, payload={"reason": reason, "cascade": cascade})

    def advance(self) -> None:
        """Dispatch or skip every ready step, then settle the run if it can."""
        if self.run.status == st.RUN_PAUSING and not self._in_flight():
            self.append(ev.WORKFLOW_PAUSED)
            return
        if self.run.status != st.RUN_RUNNING:
            if self.run.status == st.RUN_PAUSING and is_complete(self.defn, self.run):
                self.complete()
            return
        progressed = True
        while progressed:
            progressed = False
            for step in ready_steps(self.defn, self.run):
                progressed |= self._start_or_skip(step)
        if is_complete(self.defn, self.run):
            self.complete()

    def _start_or_skip(self, step: StepDef) -> bool:
        """Dispatch ``step`` (False) or skip it (True: readiness may have changed)."""
        upstream = failed_upstream(self.defn, self.run, step)
        if upstream is not None:
            self.skip(step, f"upstream step {upstream} did not complete", cascade=True)
            return True
        if step.skip_if is not None and conditions.evaluate(step.skip_if, self.run):
            cond = step.skip_if
            self.skip(step, f"skip_if {cond.step_id}.{cond.field} {cond.op} {cond.value!r}", cascade=False)
            return True
        try:
            data = resolve_input(self.run, step)
        except templates.SkipStep as why:
            self.skip(step, f"input reference: {why}", cascade=True)
            return True
        if step.type not in EXECUTED_STEP_TYPES:
            # Started before the API refused such workflows, or written by hand: fail, never hang.
            self.append(ev.STEP_QUEUED, step.id, 1, {"task": step.task, "input": data})
            self.append(ev.STEP_FAILED, step.id, 1, {"error": unsupported_step_type(step),
                                                     "failure_type": ev.FailureType.PERMANENT.value})
            self.handle_failure(step.id)
            return True
        self.dispatch(step, 1, data)
        return False

    def _in_flight(self) -> bool:
        return any(s.status in st.IN_FLIGHT_STEP_STATUSES for s in self.run.steps.values())

    def complete(self) -> None:
        output = run_output(self.defn, self.run)
        problem = _schema_problem(self.defn.output_schema, output)
        if problem:
            self.append(ev.WORKFLOW_FAILED, payload={"error": f"output does not match output_schema: {problem}"})
        else:
            self.append(ev.WORKFLOW_COMPLETED, payload={"output": output})

    # ---- failures ----------------------------------------------------------------

    def handle_failure(self, step_id: str, retry_after_ns: int = 0) -> None:
        state = self.run.step(step_id)
        if state.status != st.STEP_FAILED:
            return
        step = self.steps[step_id]
        policy = resolve_retry_policy(self.defn, step)
        if state.failure_type != ev.FailureType.PERMANENT.value and may_retry(policy, state.attempts):
            self.schedule_retry(step, state, retry_after_ns or calculate_delay(policy, state.attempts))
            return
        self.failed_for_good(step, state)

    def schedule_retry(self, step: StepDef, state: st.StepState, delay_ns: int) -> None:
        due = self.after(delay_ns)
        self.append(ev.STEP_RETRY_SCHEDULED, step.id, state.attempts,
                    {"retry_at": due, "delay_ms": delay_ns // MILLISECOND, "error": state.error})
        self.actions.append(retry_timer(step.id, state.attempts, due))

    def failed_for_good(self, step: StepDef, state: st.StepState) -> None:
        """No retry left: compensation, on_failure, optional, saga, or a failed run."""
        if self.run.status == st.RUN_COMPENSATING and step.id in self._compensation_targets():
            self.append(ev.WORKFLOW_COMPENSATE_FAILED,
                        payload={"error": f"compensation step {step.id} failed: {state.error}"})
            return
        handled = self._handled_by(step.id)
        if handled is not None:
            self.fail_run(handled, self.run.step(handled),
                          suffix=f"; its on_failure step {step.id} failed too: {state.error}")
            return
        if step.on_failure:
            self._run_handler(step, state)
            return
        if step.optional:
            return
        if not self._start_saga(step, state):
            self.fail_run(step.id, state)

    def fail_run(self, step_id: str, state: st.StepState, suffix: str = "") -> None:
        attempts = f" after {state.attempts} attempts" if state.attempts > 1 else ""
        self.append(ev.WORKFLOW_FAILED, step_id=step_id,
                    payload={"error": f"step {step_id} failed{attempts}: {state.error}{suffix}"})

    def worker_lost(self, step: StepDef, state: st.StepState) -> None:
        """The worker holding a soft-sticky step is gone: run the step elsewhere now.

        Not the step's failure, so no retry is spent: the attempt is recorded as
        failed and the next one goes to any worker.
        """
        error = f"worker {state.worker_id} running the step is gone"
        self.append(ev.STEP_FAILED, step.id, state.attempts,
                    {"error": error, "failure_type": ev.FailureType.TRANSIENT.value, "worker_lost": True},
                    event_id=f"{step.id}.{state.attempts}.worker_lost")
        self.append(ev.STEP_RETRY_SCHEDULED, step.id, state.attempts,
                    {"retry_at": self.stamp, "delay_ms": 0, "error": error})
        self.dispatch(step, state.attempts + 1, state.input, sticky=False)

    # ---- on_failure ----------------------------------------------------------------

    def _handled_by(self, handler_id: str) -> str | None:
        """The failed step whose on_failure handler is ``handler_id``, if any."""
        for step in self.defn.steps:
            if step.on_failure == handler_id and self.run.step(step.id).status == st.STEP_FAILED:
                return step.id
        return None

    def _run_handler(self, step: StepDef, state: st.StepState) -> None:
        handler = self.steps[step.on_failure]
        if self.run.step(handler.id).status != st.STEP_PENDING:
            return
        context = {"failed_step": step.id, "error": state.error, "attempts": state.attempts, "input": state.input}
        self.dispatch(handler, 1, context)

    def recover_from(self, handler_id: str) -> None:
        failed = self._handled_by(handler_id)
        if failed is None:
            return
        self.append(ev.STEP_RECOVERED, failed, payload={"handler": handler_id})
        for step in self.defn.steps:
            if failed in step.depends_on and self.run.step(step.id).status == st.STEP_PENDING:
                self.skip(step, f"upstream step {failed} was recovered by {handler_id}", cascade=False)

    # ---- saga --------------------------------------------------------------------------

    def _compensation_targets(self) -> list[str]:
        return [self.steps[s].compensate for s in self.run.compensation]

    def _start_saga(self, step: StepDef, state: st.StepState) -> bool:
        done = [
            s for s in self.defn.steps
            if s.compensate and self.run.step(s.id).status == st.STEP_COMPLETED
        ]
        if not done:
            return False
        done.sort(key=lambda s: self.run.step(s.id).completed_order, reverse=True)
        chain, seen = [], set()
        for s in done:  # a target shared by several steps runs once
            if s.compensate not in seen:
                seen.add(s.compensate)
                chain.append(s.id)
        self.append(ev.WORKFLOW_COMPENSATING,
                    payload={"chain": chain, "trigger_step": step.id, "trigger_error": state.error})
        self.compensate_next()
        return True

    def compensate_next(self) -> None:
        for original in self.run.compensation:
            target = self.steps[self.steps[original].compensate]
            status = self.run.step(target.id).status
            if status == st.STEP_COMPLETED:
                continue
            if status == st.STEP_PENDING:
                context = {
                    "original_step": original, "original_output": self.run.step(original).output,
                    "trigger_step": self.run.trigger_step, "trigger_error": self.run.trigger_error,
                }
                self.dispatch(target, 1, context)
            return
        self.append(ev.WORKFLOW_COMPENSATED, payload={
            "error": f"step {self.run.trigger_step} failed: {self.run.trigger_error}; compensated"})


# ---- handlers, one per event type ---------------------------------------------------------


def _on_workflow_started(d: Decision, event: ev.Event) -> None:
    if d.defn.timeout:
        d.actions.append(deadline_timer(d.after(int(d.defn.timeout))))


def _on_started(d: Decision, event: ev.Event) -> None:
    step = d.steps.get(event.step_id)
    state = d.run.step(event.step_id)
    if step is None or state.status != st.STEP_RUNNING or state.attempts != event.attempt:
        return
    if step.timeout:
        # Counted from the recorded start, as a rebuilt run's re-armed timer is.
        d.actions.append(step_timeout_timer(step.id, event.attempt, add_ns(state.started_at, int(step.timeout))))
    if watches_worker(d.run, state):
        d.actions.append(sticky_check_timer(step.id, event.attempt, d.after(STICKY_CHECK_NS), state.worker_id))


def _on_completed(d: Decision, event: ev.Event) -> None:
    if d.run.status == st.RUN_COMPENSATING and event.step_id in d._compensation_targets():
        d.compensate_next()
    elif d._handled_by(event.step_id) is not None:
        d.recover_from(event.step_id)


def _on_failed(d: Decision, event: ev.Event) -> None:
    rate_limited = d.run.step(event.step_id).failure_type == ev.FailureType.RATE_LIMITED.value
    d.handle_failure(event.step_id, rate_limited_delay(event.payload) if rate_limited else 0)


def _on_resumed(d: Decision, event: ev.Event) -> None:
    # Timers that fired while the run was paused were ignored: arm them again.
    d.actions.extend(t for t in wanted_timers(d.run) if t.kind == RETRY)


def _on_timer(d: Decision, event: ev.Event) -> None:
    payload = event.payload if isinstance(event.payload, dict) else {}
    kind, step_id, attempt = payload.get("kind"), payload.get("step_id", ""), payload.get("attempt", 0)
    if kind == DEADLINE:
        d.append(ev.WORKFLOW_CANCELLED, payload={"reason": "deadline exceeded"}, event_id="deadline.cancelled")
        return
    step = d.steps.get(step_id)
    state = d.run.step(step_id)
    if step is None or state.attempts != attempt:
        return
    if kind == RETRY and state.status == st.STEP_RETRYING and d.run.status in (st.RUN_RUNNING, st.RUN_COMPENSATING):
        d.dispatch(step, attempt + 1, state.input)
    elif kind == STEP_TIMEOUT and state.status in st.IN_FLIGHT_STEP_STATUSES:
        error = f"step timeout exceeded ({format_duration(int(step.timeout))})"
        d.append(ev.STEP_FAILED, step_id, attempt,
                 {"error": error, "failure_type": ev.FailureType.TRANSIENT.value, "timeout": True},
                 event_id=f"{step_id}.{attempt}.timeout")
        d.handle_failure(step_id)
    elif kind == STICKY_CHECK and state.status == st.STEP_RUNNING and state.worker_id == payload.get("worker_id"):
        if payload.get("worker_alive", True):
            d.actions.append(sticky_check_timer(step_id, attempt, d.after(STICKY_CHECK_NS), state.worker_id))
        else:
            d.worker_lost(step, state)
    elif kind == STICKY_FALLBACK and state.status == st.STEP_QUEUED:
        fallback = d.task_for(step, attempt, state.input, sticky=False)
        d.actions.append(EnqueueTask(fallback.task, fallback.payload, fallback.group, variant="fallback"))


def unsupported_step_type(step: StepDef) -> str:
    return f"step type {step.type} is not executed by this engine yet (step {step.id})"


def rate_limited_delay(payload: Any) -> int:
    ms = payload.get("retry_after_ms", 0) if isinstance(payload, dict) else 0
    if isinstance(ms, bool) or not isinstance(ms, (int, float)) or ms != ms:
        ms = 0  # a worker's malformed hint (text, NaN) must not crash the run's owner
    return int(min(max(ms, 100), HOUR // MILLISECOND)) * MILLISECOND


def _schema_problem(schema: dict | None, value: Any) -> str:
    if schema is None:
        return ""
    import jsonschema  # imported on first use: most workflows have no schema

    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError as err:
        where = "/".join(str(p) for p in err.absolute_path)
        return err.message + (f" (at {where})" if where else "")
    return ""


# Facts that change no state but may still call for a decision.
ALWAYS_DECIDE = frozenset({ev.TIMER_FIRED})

_HANDLERS = {
    ev.WORKFLOW_STARTED: _on_workflow_started,
    ev.STEP_STARTED: _on_started,
    ev.STEP_COMPLETED: _on_completed,
    ev.STEP_FAILED: _on_failed,
    ev.WORKFLOW_RESUMED: _on_resumed,
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
