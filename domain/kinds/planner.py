"""planner, and steps a handler adds: the run's DAG grows while it runs.

A planner step's handler returns ``{"steps": [StepDef, ...]}``: a fragment.
The engine checks it (``plan_problems``: non-empty ids, at most
``max_steps``, tasks in ``allowed_tasks``, unique ids, dependencies inside
the fragment, acyclic, chains no deeper than ``max_depth``), prefixes each id
with the planner's (``<planner>-<id>``), makes every step a normal task and
records it (``planner.materialized``): the steps join the run's definition
and run like any other. The planner step waits for them, so its dependents
run after the whole fragment (unlike the Go engine, where they do not wait);
then it completes (``planner.completed``) with the outputs of the
fragment's last steps, by id. An invalid plan fails the planner for good
(``planner.rejected``), saying what is wrong; an empty one completes it.

A handler adds a step with ``ctx.add_step(id, task, input=..., after=[...])``:
the worker reports ``steps.added`` before its result; the new step depends on
the current one (and on ``after``). Steps added twice by retried attempts of
the same step are the same steps; a bad one fails the current attempt.
"""

from __future__ import annotations

from .. import events as ev
from .. import state as st
from ..decision import STARTERS, Decision, start_normal
from ..definition import PlannerConfig
from ..fragments import added_problem, plan
from . import on_fact


@on_fact(ev.StepCompleted)
def _planned(d: Decision, event: ev.StepCompleted) -> None:
    step, state = d.steps.get(event.step_id), d.run.step(event.step_id)
    if step is None or step.type != "planner" or event.instance is not None or state.status != st.StepStatus.COMPLETED:
        return
    config = step.parsed_config()
    assert isinstance(config, PlannerConfig)
    fragment, problem = plan(d.defn, step, config, state.output, len(d.run.dynamic_steps))
    if problem:
        d.append(ev.PlannerRejected, step.id, state.attempts, ev.RunEnd(error=problem))
        d.handle_failure(step.id)
        return
    d.append(ev.PlannerMaterialized, step.id, state.attempts, ev.Fragment(steps=fragment))
    settle_planners(d)


def settle_planners(d: Decision) -> None:
    """Planners whose fragment has all run complete (their dependents may start)."""
    for step_id, state in d.run.steps.items():
        if state.status != st.StepStatus.RUNNING or state.waiting is None or state.waiting.kind != "fragment":
            continue
        if all(_settled(d, sid) for sid in state.fragment):
            d.append(ev.PlannerCompleted, step_id, state.attempts)


def _settled(d: Decision, step_id: str) -> bool:
    """A planned step that is done, or an optional one that failed for good (the run goes on)."""
    status = d.run.step(step_id).status
    if status in st.DONE_STEP_STATUSES:
        return True
    step = d.steps.get(step_id)
    return status == st.StepStatus.FAILED and step is not None and step.optional


@on_fact(ev.StepCompleted, ev.StepSkipped, ev.StepRecovered, ev.StepFailed)
def _fragment_progressed(d: Decision, event: ev.Event) -> None:
    if d.run.dynamic_steps and event.step_id in d.run.dynamic_steps:
        settle_planners(d)


@on_fact(ev.StepsAdded)
def _added(d: Decision, event: ev.StepsAdded) -> None:
    """The fold adds only steps that fit: others fail the attempt that added them."""
    if all(s.id in d.steps for s in event.payload.steps):
        return  # the fold added them (or they were there already)
    problem = added_problem(d.defn, event.step_id, event.payload.steps, len(d.run.dynamic_steps))
    failure = ev.Failure(error=f"add_step: {problem}", failure_type=ev.FailureType.PERMANENT.value)
    d.append(ev.StepFailed, event.step_id, event.attempt, failure, event_id=f"{event.id}.refused")
    d.handle_failure(event.step_id)


STARTERS["planner"] = start_normal
