"""DAG resolution over a run's state: readiness, inputs, completion, output.

A dependency's *outcome* is what its dependents see:
- ``ok``: completed, recovered, or skipped by ``skip_if`` / ``on_failure``;
- ``bad``: failed (an optional step, or one whose handler failed), cancelled,
  or skipped because of an upstream failure (such skips cascade);
- ``pending``: anything else, including a failed step whose ``on_failure``
  handler has not finished.
A step is ready when every dependency (``depends_on`` and ``after_any``) has
an outcome; it is then skipped if a ``depends_on`` dependency is bad (unless
every ``$ref`` to it has a default), else dispatched.
"""

from __future__ import annotations

from typing import Any

from msgspec import UNSET

from . import state as st
from . import templates
from .definition import StepDef, WorkflowDef

OK, BAD, PENDING = "ok", "bad", "pending"


def dependencies(step: StepDef) -> tuple[str, ...]:
    """Every step this one waits for."""
    return step.depends_on + tuple(d for d in step.after_any if d not in step.depends_on)


def is_aux(defn: WorkflowDef, step_id: str) -> bool:
    return bool(defn.aux_steps.get(step_id))


def outcome(defn: WorkflowDef, run: st.WorkflowRun, step_id: str) -> str:
    state = run.step(step_id)
    if state.status in (st.StepStatus.COMPLETED, st.StepStatus.RECOVERED):
        return OK
    if state.status == st.StepStatus.SKIPPED:
        return BAD if state.skip_cascade else OK
    if state.status == st.StepStatus.CANCELLED:
        return BAD
    if state.status == st.StepStatus.FAILED:
        handler = defn.step_map()[step_id].on_failure if step_id in run.steps else ""
        if handler and run.step(handler).status not in (st.StepStatus.FAILED, st.StepStatus.CANCELLED):
            return PENDING
        return BAD
    return PENDING


def ready_steps(defn: WorkflowDef, run: st.WorkflowRun) -> list[StepDef]:
    """Pending, non-auxiliary steps all of whose dependencies have an outcome."""
    ready = []
    for step in defn.steps:
        if run.step(step.id).status != st.StepStatus.PENDING or is_aux(defn, step.id):
            continue
        if all(outcome(defn, run, dep) != PENDING for dep in dependencies(step)):
            ready.append(step)
    return ready


def failed_upstream(defn: WorkflowDef, run: st.WorkflowRun, step: StepDef) -> str | None:
    """A ``depends_on`` dependency whose failure skips this step, if any."""
    covered = templates.defaulted_steps(step.input) if step.input is not UNSET else set()
    for dep in step.depends_on:
        if dep not in covered and outcome(defn, run, dep) == BAD:
            return dep
    return None


def resolve_input(run: st.WorkflowRun, step: StepDef) -> Any:
    """The input template if the step has one (may raise SkipStep); else no deps:
    the run input; one dep: its output; several: {dep_id: output}."""
    if step.input is not UNSET:
        return templates.resolve(step.input, run)
    deps = step.depends_on
    if not deps:
        return run.input
    if len(deps) == 1:
        return run.step(deps[0]).output
    return {dep: run.step(dep).output for dep in deps}


def settled(defn: WorkflowDef, run: st.WorkflowRun, step: StepDef) -> bool:
    """Done as far as the run's completion is concerned."""
    status = run.step(step.id).status
    if status in st.DONE_STEP_STATUSES:
        return True
    return status == st.StepStatus.FAILED and step.optional and outcome(defn, run, step.id) == BAD


def is_complete(defn: WorkflowDef, run: st.WorkflowRun) -> bool:
    """Every non-auxiliary step settled; auxiliary steps count only once they ran."""
    for step in defn.steps:
        status = run.step(step.id).status
        if is_aux(defn, step.id):
            if status in st.IN_FLIGHT_STEP_STATUSES or status == st.StepStatus.RETRYING:
                return False
            continue
        if not settled(defn, run, step):
            return False
    return True


def sink_steps(defn: WorkflowDef) -> list[str]:
    """Non-auxiliary steps no other non-auxiliary step depends on."""
    needed = {dep for s in defn.steps if not is_aux(defn, s.id) for dep in dependencies(s)}
    return [s.id for s in defn.steps if not is_aux(defn, s.id) and s.id not in needed]


def run_output(defn: WorkflowDef, run: st.WorkflowRun) -> Any:
    sinks = sink_steps(defn)
    if len(sinks) == 1:
        return run.step(sinks[0]).output
    return {sid: run.step(sid).output for sid in sinks}


def blockers(defn: WorkflowDef, run: st.WorkflowRun) -> dict[str, list[str]]:
    """Pending steps and the dependencies they still wait on."""
    waiting = {}
    for step in defn.steps:
        if run.step(step.id).status != st.StepStatus.PENDING or is_aux(defn, step.id):
            continue
        deps = [d for d in dependencies(step) if outcome(defn, run, d) == PENDING]
        if deps:
            waiting[step.id] = deps
    return waiting


def handled_by(defn: WorkflowDef, run: st.WorkflowRun, handler_id: str) -> str | None:
    """The failed step whose on_failure handler is ``handler_id``, if any."""
    for step in defn.steps:
        if step.on_failure == handler_id and run.step(step.id).status == st.StepStatus.FAILED:
            return step.id
    return None


def failure_context(defn: WorkflowDef, run: st.WorkflowRun, handler_id: str) -> Any:
    """The input of on_failure handler ``handler_id``: what failed, how, and with what input."""
    failed = handled_by(defn, run, handler_id)
    if failed is None:
        return None
    state = run.step(failed)
    return {"failed_step": failed, "error": state.error, "attempts": state.attempts, "input": state.input}


def compensation_context(defn: WorkflowDef, run: st.WorkflowRun, target_id: str) -> Any:
    """The input of compensation step ``target_id``: the step it undoes and why."""
    steps = defn.step_map()
    for original in run.compensation:
        if steps[original].compensate == target_id:
            return {
                "original_step": original,
                "original_output": run.step(original).output,
                "trigger_step": run.trigger_step,
                "trigger_error": run.trigger_error,
            }
    return None
