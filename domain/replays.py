"""Replaying a step that failed for good: when a run may take it up again.

Theory of operation. A step that failed for good leaves a dead letter (the
task of its last attempt, in DEAD_LETTERS). An operator who fixed the cause
replays it: a ``step.replayed`` fact names the failed attempt, the step goes
back to ``retrying`` and its next attempt starts at once, under a new task
message id (the attempt number is in it). When the run *failed* because of
that step, the replay reopens the run: it is running again, its error and end
time cleared.

Reopening a run that ended is a real change of state, so it is allowed only
where nothing else the run did on ending has to be undone. ``replay_problem``
is that rule, in one place: the control plane asks it before it publishes the
fact (and says why not), and ``fold`` asks it again before it applies the fact
(the state may have moved meanwhile). Refused:

- a step that is not failed (completed, skipped, recovered: nothing to redo;
  queued, running, retrying: the run is still working on it);
- a run that did not fail (running, cancelled, compensated: its saga already
  undid the work), or failed on another step;
- a child run (its parent was told it failed and went its own way);
- a workflow that limits its runs (``concurrency.max_runs``, ``singleton``):
  the slot the run held was given to another run when it failed;
- a run whose other steps were still in flight when it failed (their tasks
  and timers were dropped then).
"""

from __future__ import annotations

from . import state as st
from .resolve import handled_by

# Step statuses in which a step was still under way when its run ended.
UNDER_WAY = frozenset(
    {
        st.StepStatus.QUEUED,
        st.StepStatus.RUNNING,
        st.StepStatus.RETRYING,
        st.StepStatus.WAITING,
        st.StepStatus.CONTINUING,
    }
)


def replay_problem(run: st.WorkflowRun, step_id: str) -> str:
    """Why ``step_id`` of ``run`` cannot be replayed now; "" if it can."""
    defn = run.definition
    if defn is None:
        return f"run {run.run_id} has not started"
    if step_id not in run.steps:
        return f"run {run.run_id} has no step {step_id!r}"
    status = run.step(step_id).status
    if status in st.DONE_STEP_STATUSES:
        return f"step {step_id} of run {run.run_id} is already {status}: nothing to replay"
    if status != st.StepStatus.FAILED:
        return f"step {step_id} of run {run.run_id} is {status}: the run is still working on it"
    if run.status != st.RunStatus.FAILED:
        return f"run {run.run_id} is {run.status}; only a step a run failed on can be replayed"
    if run.parent_run_id:
        return f"run {run.run_id} is a child of run {run.parent_run_id}, which was told it failed"
    if (defn.concurrency is not None and defn.concurrency.max_runs) or defn.singleton is not None:
        return f"workflow {defn.name} limits its runs (concurrency.max_runs or singleton); start a new run instead"
    busy = sorted(sid for sid, s in run.steps.items() if s.status in UNDER_WAY)
    if busy:
        return f"steps {', '.join(busy)} of run {run.run_id} were still under way when it failed"
    handled = handled_by(defn, run, step_id)  # the step is an on_failure handler: it stands for that step
    steps = defn.step_map()
    others = [
        sid
        for sid, s in run.steps.items()
        if s.status == st.StepStatus.FAILED and sid not in (step_id, handled) and not _optional(steps.get(sid))
    ]
    if others:
        return f"run {run.run_id} failed on step {others[0]}, not on {step_id}"
    return ""


def _optional(step: object) -> bool:
    return bool(getattr(step, "optional", False))
