"""DAG resolution over a run's state: readiness, inputs, completion, output."""

from __future__ import annotations

from typing import Any

from . import state as st
from .definition import StepDef, WorkflowDef


def dependencies(step: StepDef) -> tuple[str, ...]:
    """Every step this one waits for."""
    return step.depends_on + tuple(d for d in step.after_any if d not in step.depends_on)


def is_aux(defn: WorkflowDef, step_id: str) -> bool:
    return bool(defn.aux_steps.get(step_id))


def ready_steps(defn: WorkflowDef, run: st.WorkflowRun) -> list[StepDef]:
    """Pending, non-auxiliary steps whose dependencies are all done, in definition order."""
    ready = []
    for step in defn.steps:
        if run.step(step.id).status != st.STEP_PENDING or is_aux(defn, step.id):
            continue
        if all(run.step(dep).status in st.DONE_STEP_STATUSES for dep in dependencies(step)):
            ready.append(step)
    return ready


def resolve_input(run: st.WorkflowRun, step: StepDef) -> Any:
    """No deps: the run input; one dep: its output; several: {dep_id: output}."""
    deps = step.depends_on
    if not deps:
        return run.input
    if len(deps) == 1:
        return run.step(deps[0]).output
    return {dep: run.step(dep).output for dep in deps}


def is_complete(defn: WorkflowDef, run: st.WorkflowRun) -> bool:
    """Every non-auxiliary step is done; auxiliary steps only count once they ran."""
    for step in defn.steps:
        status = run.step(step.id).status
        if is_aux(defn, step.id) and status == st.STEP_PENDING:
            continue
        if status not in st.DONE_STEP_STATUSES:
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
