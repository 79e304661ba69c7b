"""Decision: the working copy of a run while ``decide`` works out what follows.

A ``Decision`` collects actions and folds each decision event it appends into
its copy of the run, so one call can cascade: a failure schedules a retry or
starts a saga; a completion dispatches the next steps, skips what must be
skipped, and completes the run. Each step type starts its own way
(``STARTERS``, filled in by ``domain/kinds``); what happens to an attempt
that fails — retry, on_failure, saga, failed run — is the same for all
(failures.py).

A map step's instances are attempts of their own (``instance`` on the events
and actions): each retries by the step's policy, and the map fails when one
fails for good.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import msgspec

from . import conditions, templates
from . import events as ev
from . import state as st
from .actions import Acquire, Action, AppendEvent, DropTask, EnqueueTask
from .definition import StepDef, WorkflowDef
from .durations import HOUR, MILLISECOND
from .failures import FailureHandling
from .fold import INPUT_FROM_PREVIOUS, INPUT_FROM_WIRING, fold
from .identifiers import is_identifier
from .limits import LimitProblem, holder_id, step_limits
from .resolve import (
    failed_upstream,
    is_complete,
    ready_steps,
    resolve_input,
    run_output,
)
from .timers import STICKY_FALLBACK_NS, sticky_fallback_timer
from .trace_spans import attempt_trace_parent

# A value (step input, run output) larger than this, encoded, is recorded by
# reference to the state that holds it: a history record must stay under the
# server's max payload even when one decision carries several large values.
INLINE_VALUE_LIMIT = 16 * 1024
# The largest task message (TaskPayload) the server takes: its max payload (1 MiB
# by default) less room for headers. The engine passes the server's own figure.
DEFAULT_MAX_MESSAGE = 1024 * 1024 - 4096
# Room a task message needs besides its input (ids, names, trace context).
TASK_ENVELOPE = 2048

# Step types whose tasks flow control may hold (the others have no task).
LIMITED_TYPES = frozenset({"normal", "agent", "agent_loop", "planner", "map"})
# Step types the engine runs without a worker's task (a retry starts them afresh).
ENGINE_RUN_TYPES = frozenset({"sleep", "approval", "wait_for_event", "sub_workflow"})

# Steps concurrency.max_steps counts: an attempt under way, or one that follows by itself.
_UNDER_WAY = st.HOLDING_STEP_STATUSES | {st.StepStatus.RETRYING, st.StepStatus.CONTINUING}

# step type -> how a ready step of that type starts (given its resolved input)
Starter = Callable[["Decision", StepDef, Any], None]
STARTERS: dict[str, Starter] = {}


class Decision(FailureHandling):
    """The working copy of a run and the actions decided on it; failures are handled by
    ``FailureHandling`` (failures.py)."""

    def __init__(
        self, defn: WorkflowDef, run: st.WorkflowRun, now: datetime, max_message: int = DEFAULT_MAX_MESSAGE
    ) -> None:
        self.defn, self.run, self.now, self.max_message = defn, run, now, max_message
        self.stamp = ev.format_timestamp(now)
        self.actions: list[Action] = []
        self.steps = defn.step_map()

    def after(self, ns: int) -> str:
        return ev.format_timestamp(self.now + timedelta(microseconds=ns // 1000))

    def refresh(self) -> None:
        """The definition grew (steps added while the run runs): decide with all of it."""
        if self.run.definition is not None and self.run.definition is not self.defn:
            self.defn = self.run.definition
            self.steps = self.defn.step_map()

    # ---- recording ---------------------------------------------------------------

    def append(
        self,
        cls: type[ev.EventBase],
        step_id: str = "",
        attempt: int = 0,
        payload: Any = None,
        event_id: str = "",
        instance: int | None = None,
    ) -> None:
        fields: dict[str, Any] = {"payload": payload} if payload is not None else {}
        if instance is not None:
            fields["instance"] = instance
        tag: str = cls.__struct_config__.tag  # type: ignore[assignment]
        event = cls(
            run_id=self.run.run_id,
            step_id=step_id,
            timestamp=self.stamp,
            trace_parent=self.run.trace_parent,
            attempt=attempt,
            id=event_id or ev.fact_id(tag, step_id, attempt, instance),
            **fields,
        )
        self.run = fold(self.run, event)  # type: ignore[arg-type]
        self.actions.append(AppendEvent(event))  # type: ignore[arg-type]
        self.refresh()

    # ---- dispatch ------------------------------------------------------------------

    def dispatch(
        self,
        step: StepDef,
        attempt: int,
        data: Any,
        sticky: bool = True,
        input_from: str = "",
        instance: int | None = None,
        iteration: int = 0,
    ) -> None:
        """Queue an attempt of ``step`` with input ``data``; ``input_from`` says where the
        state holds that value, so a large one is recorded by reference."""
        size = encoded_size(data)
        recorded = ev.Queued(task=step.task, input=data)
        if input_from and size > INLINE_VALUE_LIMIT:
            recorded = ev.Queued(task=step.task, input_from=input_from)
        limit = self.max_message - TASK_ENVELOPE
        if size > limit:
            # No task message can carry it: fail the step (permanently) rather than hang.
            self.append(ev.StepQueued, step.id, attempt, ev.Queued(task=step.task), instance=instance)
            error = f"input of {size} bytes is too large for a task message (limit {limit})"
            failure = ev.Failure(error=error, failure_type=ev.FailureType.PERMANENT.value)
            self.append(ev.StepFailed, step.id, attempt, failure, instance=instance)
            self.handle_failure(step.id, instance=instance)
            return
        self.append(ev.StepQueued, step.id, attempt, recorded, instance=instance)
        task = self.task_for(step, attempt, data, sticky, instance, iteration)
        self.actions.append(task)
        if task.group.startswith("sticky-") and self.defn.sticky == "soft":
            self.actions.append(sticky_fallback_timer(step.id, attempt, self.after(STICKY_FALLBACK_NS)))

    def retry(self, step: StepDef, attempt: int, sticky: bool = True, instance: int | None = None) -> None:
        """Queue the next attempt with the previous attempt's input (the same iteration)."""
        state = self.state_of(step.id, instance)
        parent = self.run.step(step.id)
        self.dispatch(step, attempt, state.input, sticky, INPUT_FROM_PREVIOUS, instance, parent.iterations)

    def start_again(self, step: StepDef, attempt: int, instance: int | None = None) -> None:
        """The next attempt after a retry's backoff (or an agent loop's next iteration): a
        worker's task with the same input, or a step the engine runs (a child, a wait)
        started afresh; a limited task waits for admission first."""
        if self.needs_admission(step, instance):
            self.hold(step, self.next_input(step, instance), instance)
        elif step.type in ENGINE_RUN_TYPES and instance is None:
            STARTERS[step.type](self, step, resolve_input(self.run, step))
        else:
            self.retry(step, attempt, instance=instance)

    def task_for(
        self,
        step: StepDef,
        attempt: int,
        data: Any,
        sticky: bool = True,
        instance: int | None = None,
        iteration: int = 0,
    ) -> EnqueueTask:
        payload = ev.TaskPayload(
            task_id=f"{self.run.run_id}.{step.id}" + (f".{instance}" if instance is not None else ""),
            run_id=self.run.run_id,
            step_id=step.id,
            attempt=attempt,
            iteration=iteration,
            instance=instance,
            input=data,
            task=step.task,
            workflow_name=self.defn.name,
            timeout_ns=int(step.timeout),
            traceparent=attempt_trace_parent(self.run.trace_parent, self.run.run_id, step.id, attempt, instance),
            tracestate=self.run.trace_state,
            baggage=self.run.baggage,
            metadata=step.metadata,
            step_type=step.type,
        )
        group = self._group(step, sticky)
        return EnqueueTask(step.task, payload, group, capabilities=step.required_capabilities)

    def _group(self, step: StepDef, sticky: bool) -> str:
        worker = self.run.sticky_worker
        # A step that requires capabilities is never bound to the run's worker, which may
        # not offer them (validation refuses sticky with required_capabilities anyway).
        bindable = sticky and self.defn.sticky and not step.required_capabilities
        if bindable and worker and is_identifier(f"sticky-{worker}"):
            return f"sticky-{worker}"
        return step.worker_group

    def drop_tasks(self, step: StepDef, up_to_attempt: int, instance: int | None = None) -> None:
        """Take still-queued tasks of attempts the run moved past out of the queue
        (the worker group and the sticky subject both, wherever they went)."""
        if not step.task:
            return
        for group in sorted({step.worker_group, self._group(step, True)}):
            caps = step.required_capabilities
            self.actions.append(DropTask(step.task, self.run.run_id, step.id, up_to_attempt, group, instance, caps))

    def reject(self, step: StepDef, error: str, instance: int | None = None) -> None:
        """A step (or map element) that cannot start, for a reason no retry changes: it fails
        at once, for good."""
        attempt = self.state_of(step.id, instance).attempts + 1
        self.append(ev.StepQueued, step.id, attempt, ev.Queued(task=step.task), instance=instance)
        failure = ev.Failure(error=error, failure_type=ev.FailureType.PERMANENT.value)
        self.append(ev.StepFailed, step.id, attempt, failure, instance=instance)
        self.handle_failure(step.id, instance=instance)

    # ---- flow control ---------------------------------------------------------------

    @property
    def now_ms(self) -> int:
        return int(self.now.timestamp() * 1000)

    def needs_admission(self, step: StepDef, instance: int | None = None) -> bool:
        """A worker's task under a rate limit, a concurrency limit or a step singleton (a
        map's limits apply to each of its instances, not to the map itself)."""
        limited = step.rate_limit or step.keyed_rate_limit or step.max_task_concurrency or step.singleton
        if not limited or step.type not in LIMITED_TYPES:
            return False
        return step.type != "map" or instance is not None

    def hold(self, step: StepDef, data: Any, instance: int | None = None) -> None:
        """The step's next attempt waits for admission (``step.held``); the shell asks flow
        control at once and records its answer."""
        state = self.state_of(step.id, instance)
        attempt = state.attempts + 1
        try:
            requests = step_limits(self.defn, step, data, self.now_ms)
        except LimitProblem as why:
            self.reject(step, str(why), instance)
            return
        holder = holder_id(self.run.run_id, step.id, attempt, instance)
        hold = ev.Hold(keys=tuple(r.key for r in requests), reason="; ".join(r.reason for r in requests))
        self.append(ev.StepHeld, step.id, attempt, hold, instance=instance)
        self.actions.append(Acquire(tuple(requests), holder, step.id, attempt, instance))

    def next_input(self, step: StepDef, instance: int | None = None) -> Any:
        """The input the step's next attempt gets: the previous attempt's, else its wiring's."""
        state = self.state_of(step.id, instance)
        if state.attempts:
            return state.input
        data = resolve_input(self.run, step)
        return data[instance] if instance is not None else data

    def start_admitted(self, step: StepDef, instance: int | None = None) -> None:
        """Start an admitted attempt the way its step type starts."""
        state = self.state_of(step.id, instance)
        if state.attempts:
            self.retry(step, state.attempts + 1, instance=instance)
        elif instance is not None:
            self.dispatch(step, 1, self.next_input(step, instance), input_from=INPUT_FROM_WIRING, instance=instance)
        else:
            STARTERS[step.type](self, step, resolve_input(self.run, step))

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
                if self._at_max_steps():
                    break
                progressed |= self._start_or_skip(step)
                # A step that failed at its start may have ended the run: its
                # dependents are no longer started, nor skipped (the fold ignores
                # events after the end, so skipping them again would never stop).
                if self.run.status != st.RunStatus.RUNNING:
                    return
        if is_complete(self.defn, self.run):
            self.complete()

    def _start_or_skip(self, step: StepDef) -> bool:
        """Start ``step`` (False) or skip it (True: readiness may have changed)."""
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
        starter = STARTERS.get(step.type)
        if starter is None:  # a type this engine does not run: fail, never hang
            self.reject(step, unsupported_step_type(step))
            return True
        if self.needs_admission(step):
            self.hold(step, data)
        else:
            starter(self, step, data)
        return self.run.step(step.id).status in st.TERMINAL_STEP_STATUSES

    def _at_max_steps(self) -> bool:
        """concurrency.max_steps: at most that many of the run's steps under way — queued,
        running or held, or between attempts (a retry's backoff, an agent loop's delay), whose
        next attempt starts without asking again."""
        cap = self.defn.concurrency.max_steps if self.defn.concurrency else 0
        busy = sum(1 for s in self.run.steps.values() if s.status in _UNDER_WAY)
        return bool(cap) and busy >= cap

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

    def state_of(self, step_id: str, instance: int | None = None) -> st.StepState:
        state = self.run.step(step_id)
        if instance is not None and 0 <= instance < len(state.instances):
            return state.instances[instance]
        return state


def start_normal(d: Decision, step: StepDef, data: Any) -> None:
    """A step a worker runs (normal, agent, planner, agent_loop's first iteration)."""
    d.dispatch(step, d.run.step(step.id).attempts + 1, data, input_from=INPUT_FROM_WIRING)


STARTERS.update({"normal": start_normal, "agent": start_normal})


def unsupported_step_type(step: StepDef) -> str:
    return f"step type {step.type} is not executed by this engine yet (step {step.id})"


def rate_limited_delay(ms: Any) -> int:
    """A worker's retry-after hint in ms, clamped to [100 ms, 1 h]; a malformed one means 100 ms."""
    if isinstance(ms, bool) or not isinstance(ms, (int, float)) or ms != ms:
        ms = 0  # a worker's malformed hint (text, NaN) must not crash the run's owner
    return int(min(max(ms, 100), HOUR // MILLISECOND)) * MILLISECOND


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
