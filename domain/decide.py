"""decide(def, run, event, now) -> actions: what follows from one event.

Theory of operation: ``run`` is the state *after* folding ``event``. A
``Decision`` collects actions and folds each decision event it appends into
its working copy of the run, so one call can cascade (a failure schedules
a retry or starts a saga; a completion dispatches the next steps, skips
what must be skipped, and completes the run). Everything is keyed by
deterministic ids and guarded by the state, so deciding twice on the same
state asks for the same things. ``now`` is passed in; nothing here reads a
clock.

``evolve`` also ends the timers the new state no longer waits on (a step
that finished before its timeout, a run that ended): what the state wanted
before minus what it wants after, as ``CancelTimer`` actions.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import msgspec

from . import conditions, templates
from . import events as ev
from . import state as st
from .actions import Action, AppendEvent, CancelTimer, DropTask, EnqueueTask
from .definition import EXECUTED_STEP_TYPES, StepDef, WorkflowDef
from .durations import HOUR, MILLISECOND, format_duration
from .fold import INPUT_FROM_COMPENSATION, INPUT_FROM_ON_FAILURE, INPUT_FROM_PREVIOUS, INPUT_FROM_WIRING, fold
from .identifiers import is_identifier
from .resolve import (
    compensation_context,
    failed_upstream,
    failure_context,
    handled_by,
    is_complete,
    ready_steps,
    resolve_input,
    run_output,
)
from .retry import calculate_delay, may_retry, resolve_retry_policy
from .timers import (
    DEADLINE,
    RETRY,
    STEP_TIMEOUT,
    STICKY_CHECK,
    STICKY_CHECK_NS,
    STICKY_FALLBACK,
    STICKY_FALLBACK_NS,
    add_ns,
    deadline_timer,
    retry_timer,
    step_timeout_timer,
    sticky_check_timer,
    sticky_fallback_timer,
    wanted_timers,
    watches_worker,
)

# A value (step input, run output) larger than this, encoded, is recorded by
# reference to the state that holds it: a history record must stay under the
# server's max payload even when one decision carries several large values.
INLINE_VALUE_LIMIT = 16 * 1024
# The largest task message (TaskPayload) the server takes: its max payload (1 MiB
# by default) less room for headers. The engine passes the server's own figure.
DEFAULT_MAX_MESSAGE = 1024 * 1024 - 4096


def decide(
    defn: WorkflowDef, run: st.WorkflowRun, event: ev.Event, now: datetime, max_message: int = DEFAULT_MAX_MESSAGE
) -> list[Action]:
    if run.is_terminal or run.definition is None:
        return []
    decision = Decision(defn, run, now, max_message)
    handler = _HANDLERS.get(type(event))
    if handler is not None:
        handler(decision, event)
    decision.advance()
    return decision.actions


def recover(run: st.WorkflowRun, now: datetime, max_message: int = DEFAULT_MAX_MESSAGE) -> list[Action]:
    """Re-issue what a rebuilt run waits on: queued tasks, armed timers, due steps."""
    if run.is_terminal or run.definition is None:
        return []
    decision = Decision(run.definition, run, now, max_message)
    for step in run.definition.steps:
        state = run.step(step.id)
        if state.status == st.StepStatus.QUEUED:
            decision.actions.append(decision.task_for(step, state.attempts, state.input))
    decision.actions.extend(wanted_timers(run))
    decision.advance()
    return decision.actions


class Decision:
    def __init__(
        self, defn: WorkflowDef, run: st.WorkflowRun, now: datetime, max_message: int = DEFAULT_MAX_MESSAGE
    ) -> None:
        self.defn, self.run, self.now, self.max_message = defn, run, now, max_message
        self.stamp = ev.format_timestamp(now)
        self.actions: list[Action] = []
        self.steps = defn.step_map()

    def after(self, ns: int) -> str:
        return ev.format_timestamp(self.now + timedelta(microseconds=ns // 1000))

    # ---- recording ---------------------------------------------------------------

    def append(
        self, cls: type[ev.EventBase], step_id: str = "", attempt: int = 0, payload: Any = None, event_id: str = ""
    ) -> None:
        fields: dict[str, Any] = {"payload": payload} if payload is not None else {}
        event = cls(
            run_id=self.run.run_id,
            step_id=step_id,
            timestamp=self.stamp,
            trace_parent=self.run.trace_parent,
            attempt=attempt,
            id=event_id or ev.fact_id(cls.__struct_config__.tag, step_id, attempt),  # type: ignore[arg-type]
            **fields,
        )
        self.run = fold(self.run, event)  # type: ignore[arg-type]
        self.actions.append(AppendEvent(event))  # type: ignore[arg-type]

    # ---- dispatch ------------------------------------------------------------------

    def dispatch(self, step: StepDef, attempt: int, data: Any, sticky: bool = True, input_from: str = "") -> None:
        """Queue an attempt of ``step`` with input ``data``; ``input_from`` says where the
        state holds that value, so a large one is recorded by reference."""
        size = encoded_size(data)
        recorded = ev.Queued(task=step.task, input=data)
        if input_from and size > INLINE_VALUE_LIMIT:
            recorded = ev.Queued(task=step.task, input_from=input_from)
        limit = self.max_message - TASK_ENVELOPE
        if size > limit:
            # No task message can carry it: fail the step (permanently) rather than hang.
            self.append(ev.StepQueued, step.id, attempt, ev.Queued(task=step.task, input=None))
            self.append(
                ev.StepFailed,
                step.id,
                attempt,
                ev.Failure(
                    error=f"input of {size} bytes is too large for a task message (limit {limit})",
                    failure_type=ev.FailureType.PERMANENT.value,
                ),
            )
            self.handle_failure(step.id)
            return
        self.append(ev.StepQueued, step.id, attempt, recorded)
        task = self.task_for(step, attempt, data, sticky)
        self.actions.append(task)
        if task.group.startswith("sticky-") and self.defn.sticky == "soft":
            self.actions.append(sticky_fallback_timer(step.id, attempt, self.after(STICKY_FALLBACK_NS)))

    def retry(self, step: StepDef, attempt: int, sticky: bool = True) -> None:
        """Queue the next attempt with the previous attempt's input."""
        self.dispatch(step, attempt, self.run.step(step.id).input, sticky, input_from=INPUT_FROM_PREVIOUS)

    def task_for(self, step: StepDef, attempt: int, data: Any, sticky: bool = True) -> EnqueueTask:
        payload = ev.TaskPayload(
            task_id=f"{self.run.run_id}.{step.id}",
            run_id=self.run.run_id,
            step_id=step.id,
            attempt=attempt,
            input=data,
            task=step.task,
            workflow_name=self.defn.name,
            timeout_ns=int(step.timeout),
            traceparent=self.run.trace_parent,
        )
        return EnqueueTask(task=step.task, payload=payload, group=self._group(step, sticky))

    def _group(self, step: StepDef, sticky: bool) -> str:
        worker = self.run.sticky_worker
        if sticky and self.defn.sticky and worker and is_identifier(f"sticky-{worker}"):
            return f"sticky-{worker}"
        return step.worker_group

    def drop_tasks(self, step: StepDef, up_to_attempt: int) -> None:
        """Take still-queued tasks of attempts the run moved past out of the queue
        (the worker group and the sticky subject both, wherever they went)."""
        groups = {step.worker_group, self._group(step, True)}
        for group in sorted(groups):
            self.actions.append(DropTask(step.task, self.run.run_id, step.id, up_to_attempt, group))

    def skip(self, step: StepDef, reason: str, cascade: bool) -> None:
        self.append(ev.StepSkipped, step.id, payload=ev.Skipped(reason=reason, cascade=cascade))

    def advance(self) -> None:
        """Dispatch or skip every ready step, then settle the run if it can."""
        if self.run.status == st.RunStatus.PAUSING and not self._in_flight():
            self.append(ev.WorkflowPaused)
            return
        if self.run.status != st.RunStatus.RUNNING:
            if self.run.status == st.RunStatus.PAUSING and is_complete(self.defn, self.run):
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
            self.append(ev.StepQueued, step.id, 1, ev.Queued(task=step.task))
            self.append(
                ev.StepFailed,
                step.id,
                1,
                ev.Failure(error=unsupported_step_type(step), failure_type=ev.FailureType.PERMANENT.value),
            )
            self.handle_failure(step.id)
            return True
        self.dispatch(step, 1, data, input_from=INPUT_FROM_WIRING)
        return False

    def _in_flight(self) -> bool:
        return any(s.status in st.IN_FLIGHT_STEP_STATUSES for s in self.run.steps.values())

    def complete(self) -> None:
        output = run_output(self.defn, self.run)
        problem = _schema_problem(self.defn.output_schema, output)
        if problem:
            self.append(ev.WorkflowFailed, payload=ev.RunEnd(error=f"output does not match output_schema: {problem}"))
        elif encoded_size(output) > INLINE_VALUE_LIMIT:
            self.append(ev.WorkflowCompleted, payload=ev.RunOutput(output_from_sinks=True))
        else:
            self.append(ev.WorkflowCompleted, payload=ev.RunOutput(output=output))

    # ---- failures ----------------------------------------------------------------

    def handle_failure(self, step_id: str, retry_after_ns: int = 0) -> None:
        state = self.run.step(step_id)
        if state.status != st.StepStatus.FAILED:
            return
        step = self.steps[step_id]
        policy = resolve_retry_policy(self.defn, step)
        if (
            policy is not None
            and state.failure_type != ev.FailureType.PERMANENT.value
            and may_retry(policy, state.attempts)
        ):
            self.schedule_retry(step, state, retry_after_ns or calculate_delay(policy, state.attempts))
            return
        self.failed_for_good(step, state)

    def schedule_retry(self, step: StepDef, state: st.StepState, delay_ns: int) -> None:
        due = self.after(delay_ns)
        self.append(
            ev.StepRetryScheduled,
            step.id,
            state.attempts,
            ev.RetryScheduled(retry_at=due, delay_ms=delay_ns // MILLISECOND, error=state.error),
        )
        self.actions.append(retry_timer(step.id, state.attempts, due))

    def failed_for_good(self, step: StepDef, state: st.StepState) -> None:
        """No retry left: compensation, on_failure, optional, saga, or a failed run."""
        if self.run.status == st.RunStatus.COMPENSATING and step.id in self._compensation_targets():
            self.append(
                ev.WorkflowCompensateFailed,
                payload=ev.RunEnd(error=f"compensation step {step.id} failed: {state.error}"),
            )
            return
        handled = self._handled_by(step.id)
        if handled is not None:
            self.fail_run(
                handled, self.run.step(handled), suffix=f"; its on_failure step {step.id} failed too: {state.error}"
            )
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
        self.append(
            ev.WorkflowFailed,
            step_id=step_id,
            payload=ev.RunEnd(error=f"step {step_id} failed{attempts}: {state.error}{suffix}"),
        )

    def worker_lost(self, step: StepDef, state: st.StepState) -> None:
        """The worker holding a soft-sticky step is gone: run the step elsewhere now.

        Not the step's failure, so no retry is spent: the attempt is recorded as
        failed and the next one goes to any worker.
        """
        error = f"worker {state.worker_id} running the step is gone"
        self.append(
            ev.StepFailed,
            step.id,
            state.attempts,
            ev.Failure(error=error, failure_type=ev.FailureType.TRANSIENT.value, worker_lost=True),
            event_id=f"{step.id}.{state.attempts}.worker_lost",
        )
        self.append(
            ev.StepRetryScheduled,
            step.id,
            state.attempts,
            ev.RetryScheduled(retry_at=self.stamp, delay_ms=0, error=error),
        )
        self.drop_tasks(step, state.attempts)
        self.retry(step, state.attempts + 1, sticky=False)

    # ---- on_failure ----------------------------------------------------------------

    def _handled_by(self, handler_id: str) -> str | None:
        return handled_by(self.defn, self.run, handler_id)

    def _run_handler(self, step: StepDef, state: st.StepState) -> None:
        handler = self.steps[step.on_failure]
        if self.run.step(handler.id).status != st.StepStatus.PENDING:
            return
        self.dispatch(handler, 1, failure_context(self.defn, self.run, handler.id), input_from=INPUT_FROM_ON_FAILURE)

    def recover_from(self, handler_id: str) -> None:
        failed = self._handled_by(handler_id)
        if failed is None:
            return
        self.append(ev.StepRecovered, failed, payload=ev.Recovered(handler=handler_id))
        for step in self.defn.steps:
            if failed in step.depends_on and self.run.step(step.id).status == st.StepStatus.PENDING:
                self.skip(step, f"upstream step {failed} was recovered by {handler_id}", cascade=False)

    # ---- saga --------------------------------------------------------------------------

    def _compensation_targets(self) -> list[str]:
        return [self.steps[s].compensate for s in self.run.compensation]

    def _start_saga(self, step: StepDef, state: st.StepState) -> bool:
        done = [s for s in self.defn.steps if s.compensate and self.run.step(s.id).status == st.StepStatus.COMPLETED]
        if not done:
            return False
        done.sort(key=lambda s: self.run.step(s.id).completed_order, reverse=True)
        chain, seen = [], set()
        for s in done:  # a target shared by several steps runs once
            if s.compensate not in seen:
                seen.add(s.compensate)
                chain.append(s.id)
        self.append(
            ev.WorkflowCompensating,
            payload=ev.Compensation(chain=tuple(chain), trigger_step=step.id, trigger_error=state.error),
        )
        self.compensate_next()
        return True

    def compensate_next(self) -> None:
        for original in self.run.compensation:
            target = self.steps[self.steps[original].compensate]
            status = self.run.step(target.id).status
            if status == st.StepStatus.COMPLETED:
                continue
            if status == st.StepStatus.PENDING:
                self.dispatch(
                    target, 1, compensation_context(self.defn, self.run, target.id), input_from=INPUT_FROM_COMPENSATION
                )
            return
        self.append(
            ev.WorkflowCompensated,
            payload=ev.RunEnd(error=f"step {self.run.trigger_step} failed: {self.run.trigger_error}; compensated"),
        )


# ---- handlers, one per event type ---------------------------------------------------------


def _on_workflow_started(d: Decision, event: ev.WorkflowStarted) -> None:
    if d.defn.timeout:
        d.actions.append(deadline_timer(d.after(int(d.defn.timeout))))


def _on_started(d: Decision, event: ev.StepStarted) -> None:
    step = d.steps.get(event.step_id)
    state = d.run.step(event.step_id)
    if step is None or state.status != st.StepStatus.RUNNING or state.attempts != event.attempt:
        return
    if step.timeout:
        # Counted from the recorded start, as a rebuilt run's re-armed timer is.
        d.actions.append(step_timeout_timer(step.id, event.attempt, add_ns(state.started_at, int(step.timeout))))
    if watches_worker(d.run, state):
        d.actions.append(sticky_check_timer(step.id, event.attempt, d.after(STICKY_CHECK_NS), state.worker_id))


def _on_completed(d: Decision, event: ev.StepCompleted) -> None:
    if d.run.status == st.RunStatus.COMPENSATING and event.step_id in d._compensation_targets():
        d.compensate_next()
    elif d._handled_by(event.step_id) is not None:
        d.recover_from(event.step_id)


def _on_failed(d: Decision, event: ev.StepFailed) -> None:
    rate_limited = d.run.step(event.step_id).failure_type == ev.FailureType.RATE_LIMITED.value
    d.handle_failure(event.step_id, rate_limited_delay(event.failure.retry_after_ms) if rate_limited else 0)


def _on_resumed(d: Decision, event: ev.WorkflowResumed) -> None:
    # Timers that fired while the run was paused were ignored: arm them again.
    d.actions.extend(t for t in wanted_timers(d.run) if t.kind == RETRY)


def _on_timer(d: Decision, event: ev.TimerFired) -> None:
    fire = event.payload
    if fire.kind == DEADLINE:
        d.append(ev.WorkflowCancelled, payload=ev.RunEnd(reason="deadline exceeded"), event_id="deadline.cancelled")
        return
    step = d.steps.get(fire.step_id)
    state = d.run.step(fire.step_id)
    if step is None or state.attempts != fire.attempt:
        return
    if (
        fire.kind == RETRY
        and state.status == st.StepStatus.RETRYING
        and d.run.status in (st.RunStatus.RUNNING, st.RunStatus.COMPENSATING)
    ):
        d.retry(step, fire.attempt + 1)
    elif fire.kind == STEP_TIMEOUT and state.status in st.IN_FLIGHT_STEP_STATUSES:
        error = f"step timeout exceeded ({format_duration(int(step.timeout))})"
        d.append(
            ev.StepFailed,
            fire.step_id,
            fire.attempt,
            ev.Failure(error=error, failure_type=ev.FailureType.TRANSIENT.value, timeout=True),
            event_id=f"{fire.step_id}.{fire.attempt}.timeout",
        )
        d.drop_tasks(step, fire.attempt)
        d.handle_failure(fire.step_id)
    elif fire.kind == STICKY_CHECK and state.status == st.StepStatus.RUNNING and state.worker_id == fire.worker_id:
        if fire.worker_alive:
            d.actions.append(sticky_check_timer(fire.step_id, fire.attempt, d.after(STICKY_CHECK_NS), state.worker_id))
        else:
            d.worker_lost(step, state)
    elif fire.kind == STICKY_FALLBACK and state.status == st.StepStatus.QUEUED:
        fallback = d.task_for(step, fire.attempt, state.input, sticky=False)
        d.actions.append(EnqueueTask(fallback.task, fallback.payload, fallback.group, variant="fallback"))


def unsupported_step_type(step: StepDef) -> str:
    return f"step type {step.type} is not executed by this engine yet (step {step.id})"


def rate_limited_delay(ms: Any) -> int:
    """A worker's retry-after hint in ms, clamped to [100 ms, 1 h]; a malformed one means 100 ms."""
    if isinstance(ms, bool) or not isinstance(ms, (int, float)) or ms != ms:
        ms = 0  # a worker's malformed hint (text, NaN) must not crash the run's owner
    return int(min(max(ms, 100), HOUR // MILLISECOND)) * MILLISECOND


# Room a task message needs besides its input (ids, names, trace context).
TASK_ENVELOPE = 2048


def encoded_size(value: Any) -> int:
    """Bytes ``value`` takes as JSON (0 for what cannot be encoded: it is recorded as is)."""
    if value is None or isinstance(value, (bool, int, float)):
        return 8
    try:
        return len(msgspec.json.encode(value))
    except (TypeError, OverflowError):
        return 0


def _schema_problem(schema: dict[str, Any] | None, value: Any) -> str:
    if schema is None:
        return ""
    import jsonschema  # imported on first use: most workflows have no schema

    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError as err:
        where = "/".join(str(p) for p in err.absolute_path)
        return str(err.message) + (f" (at {where})" if where else "")
    return ""


# Facts that change no state but may still call for a decision.
ALWAYS_DECIDE = frozenset({ev.TimerFired})

_HANDLERS: dict[type, Any] = {
    ev.WorkflowStarted: _on_workflow_started,
    ev.StepStarted: _on_started,
    ev.StepCompleted: _on_completed,
    ev.StepFailed: _on_failed,
    ev.WorkflowResumed: _on_resumed,
    ev.TimerFired: _on_timer,
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
        actions += _ended_timers(run, folded, event) + _dropped_tasks(run, folded, now)
    return folded, actions


def _ended_timers(before: st.WorkflowRun, after: st.WorkflowRun, event: ev.Event) -> list[Action]:
    """Timers the run waited on before and no longer does (the one that just fired is gone already)."""
    fired = event.payload.timer_id if isinstance(event, ev.TimerFired) else ""
    wanted = {t.timer_id for t in wanted_timers(after)}
    return [
        CancelTimer(t.timer_id, t.kind, t.step_id, t.attempt)
        for t in wanted_timers(before)
        if t.timer_id not in wanted and t.timer_id != fired
    ]


def _dropped_tasks(before: st.WorkflowRun, after: st.WorkflowRun, now: datetime) -> list[Action]:
    """A run that ended with tasks still queued: take them out of the queue."""
    if not after.is_terminal or after.definition is None:
        return []
    d = Decision(after.definition, after, now)
    for step in after.definition.steps:
        state = before.step(step.id)
        if state.status in st.IN_FLIGHT_STEP_STATUSES:
            d.drop_tasks(step, state.attempts)
    return d.actions


def unrecordable(fact: ev.Event, size: int, limit: int) -> ev.Event | None:
    """What to record instead of a fact whose record would be ``size`` bytes, over ``limit``:
    a step's output too large to keep fails the step (running it again cannot shrink it).
    None: nothing can stand in for it (the fact is dropped)."""
    if isinstance(fact, ev.StepCompleted):
        return ev.StepFailed(
            run_id=fact.run_id,
            step_id=fact.step_id,
            timestamp=fact.timestamp,
            trace_parent=fact.trace_parent,
            attempt=fact.attempt,
            worker_id=fact.worker_id,
            id=f"{fact.id}.too-large",
            started_at=fact.started_at,
            payload=ev.Failure(
                error=f"output too large to record: {size} bytes with its decisions, over the limit of {limit} bytes",
                failure_type=ev.FailureType.PERMANENT.value,
            ),
        )
    return None
