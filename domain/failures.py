"""What happens to an attempt that fails, the same for every step type.

A failed attempt is retried while its step's retry policy allows; a map
instance that fails for good fails its map. A step that failed for good runs
its ``on_failure`` handler, or is let go (``optional``), or starts the saga
(the ``compensate`` steps of the completed steps, newest first), or fails the
run. ``FailureHandling`` is part of ``Decision`` (decision.py): it records
through the decision's working copy of the run and dispatches through it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import events as ev
from . import state as st
from .actions import ALL_ATTEMPTS, DeadLetter
from .durations import MILLISECOND
from .fold import INPUT_FROM_COMPENSATION, INPUT_FROM_ON_FAILURE
from .resolve import compensation_context, failure_context, handled_by
from .retry import calculate_delay, may_retry, resolve_retry_policy
from .timers import retry_timer

if TYPE_CHECKING:
    from .actions import Action, EnqueueTask
    from .definition import StepDef, WorkflowDef


class FailureHandling:
    """Retries, on_failure, saga and failed runs: mixed into ``Decision``."""

    if TYPE_CHECKING:  # provided by Decision
        defn: WorkflowDef
        run: st.WorkflowRun
        stamp: str
        actions: list[Action]
        steps: dict[str, StepDef]

        def after(self, ns: int) -> str: ...

        def append(
            self,
            cls: type[ev.EventBase],
            step_id: str = "",
            attempt: int = 0,
            payload: Any = None,
            event_id: str = "",
            instance: int | None = None,
        ) -> None: ...

        def state_of(self, step_id: str, instance: int | None = None) -> st.StepState: ...

        def dispatch(
            self,
            step: StepDef,
            attempt: int,
            data: Any,
            sticky: bool = True,
            input_from: str = "",
            instance: int | None = None,
            iteration: int = 0,
        ) -> None: ...

        def retry(self, step: StepDef, attempt: int, sticky: bool = True, instance: int | None = None) -> None: ...

        def task_for(
            self,
            step: StepDef,
            attempt: int,
            data: Any,
            sticky: bool = True,
            instance: int | None = None,
            iteration: int = 0,
        ) -> EnqueueTask: ...

        def drop_tasks(self, step: StepDef, up_to_attempt: int, instance: int | None = None) -> None: ...

        def skip(self, step: StepDef, reason: str, cascade: bool) -> None: ...

    # ---- failures ----------------------------------------------------------------

    def handle_failure(self, step_id: str, retry_after_ns: int = 0, instance: int | None = None) -> None:
        state = self.state_of(step_id, instance)
        if state.status != st.StepStatus.FAILED:
            return
        step = self.steps[step_id]
        policy = resolve_retry_policy(self.defn, step)
        permanent = state.failure_type == ev.FailureType.PERMANENT.value
        if policy is not None and not permanent and may_retry(policy, state.attempts):
            self.schedule_retry(step, state, retry_after_ns or calculate_delay(policy, state.attempts), instance)
        elif instance is not None:
            self.instance_failed(step, instance, state)
        else:
            self.failed_for_good(step, state)

    def schedule_retry(self, step: StepDef, state: st.StepState, delay_ns: int, instance: int | None = None) -> None:
        due = self.after(delay_ns)
        scheduled = ev.RetryScheduled(retry_at=due, delay_ms=delay_ns // MILLISECOND, error=state.error)
        self.append(ev.StepRetryScheduled, step.id, state.attempts, scheduled, instance=instance)
        self.actions.append(retry_timer(step.id, state.attempts, due, instance))

    def instance_failed(self, step: StepDef, instance: int, state: st.StepState) -> None:
        """One element of a map failed for good: the map step fails (its other tasks go)."""
        parent = self.run.step(step.id)
        self.drop_tasks(step, ALL_ATTEMPTS)
        attempts = f" after {state.attempts} attempts" if state.attempts > 1 else ""
        error = f"map instance {instance} failed{attempts}: {state.error}"
        failure = ev.Failure(error=error, failure_type=ev.FailureType.PERMANENT.value)
        self.append(ev.StepFailed, step.id, parent.attempts, failure)
        self.handle_failure(step.id)

    def failed_for_good(self, step: StepDef, state: st.StepState) -> None:
        """No retry left: compensation, on_failure, optional, saga, or a failed run."""
        if self.run.status == st.RunStatus.COMPENSATING and step.id in self._compensation_targets():
            error = f"compensation step {step.id} failed: {state.error}"
            self.append(ev.WorkflowCompensateFailed, payload=ev.RunEnd(error=error))
            self.dead_letter(step, state)
            return
        handled = self._handled_by(step.id)
        if handled is not None:
            suffix = f"; its on_failure step {step.id} failed too: {state.error}"
            self.fail_run(handled, self.run.step(handled), suffix=suffix)
            self.dead_letter(step, state)
            return
        if step.on_failure:
            self._run_handler(step, state)
            return
        if step.optional:
            return
        if not self._start_saga(step, state):
            self.fail_run(step.id, state)
            self.dead_letter(step, state)

    def fail_run(self, step_id: str, state: st.StepState, suffix: str = "") -> None:
        attempts = f" after {state.attempts} attempts" if state.attempts > 1 else ""
        error = f"step {step_id} failed{attempts}: {state.error}{suffix}"
        self.append(ev.WorkflowFailed, step_id=step_id, payload=ev.RunEnd(error=error))

    def dead_letter(self, step: StepDef, state: st.StepState) -> None:
        """Keep the task of a worker's step that failed for good (and failed the run) for an
        operator: a map's elements and the steps the engine runs itself have no such task."""
        if not step.task or step.type == "map" or not state.attempts:
            return
        task = self.task_for(step, state.attempts, state.input, iteration=state.iterations)
        permanent = state.failure_type == ev.FailureType.PERMANENT.value
        reason = "non_retriable" if permanent else "failed"
        self.actions.append(DeadLetter(step.task, task.payload, reason, state.error, task.group, task.capabilities))

    def worker_lost(self, step: StepDef, state: st.StepState) -> None:
        """The worker holding a soft-sticky step is gone: run the step elsewhere now.

        Not the step's failure, so no retry is spent: the attempt is recorded as
        failed and the next one goes to any worker.
        """
        error = f"worker {state.worker_id} running the step is gone"
        failure = ev.Failure(error=error, failure_type=ev.FailureType.TRANSIENT.value, worker_lost=True)
        self.append(ev.StepFailed, step.id, state.attempts, failure, event_id=f"{step.id}.{state.attempts}.worker_lost")
        scheduled = ev.RetryScheduled(retry_at=self.stamp, delay_ms=0, error=error)
        self.append(ev.StepRetryScheduled, step.id, state.attempts, scheduled)
        self.drop_tasks(step, state.attempts)
        self.retry(step, state.attempts + 1, sticky=False)

    # ---- on_failure ----------------------------------------------------------------

    def _handled_by(self, handler_id: str) -> str | None:
        return handled_by(self.defn, self.run, handler_id)

    def _run_handler(self, step: StepDef, state: st.StepState) -> None:
        handler = self.steps[step.on_failure]
        if self.run.step(handler.id).status != st.StepStatus.PENDING:
            return
        context = failure_context(self.defn, self.run, handler.id)
        self.dispatch(handler, 1, context, input_from=INPUT_FROM_ON_FAILURE)

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
        saga = ev.Compensation(chain=tuple(chain), trigger_step=step.id, trigger_error=state.error)
        self.append(ev.WorkflowCompensating, payload=saga)
        self.compensate_next()
        return True

    def compensate_next(self) -> None:
        for original in self.run.compensation:
            target = self.steps[self.steps[original].compensate]
            status = self.run.step(target.id).status
            if status == st.StepStatus.COMPLETED:
                continue
            if status == st.StepStatus.PENDING:
                context = compensation_context(self.defn, self.run, target.id)
                self.dispatch(target, 1, context, input_from=INPUT_FROM_COMPENSATION)
            return
        error = f"step {self.run.trigger_step} failed: {self.run.trigger_error}; compensated"
        self.append(ev.WorkflowCompensated, payload=ev.RunEnd(error=error))
