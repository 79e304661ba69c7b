"""agent_loop: a worker's handler runs once per iteration until it returns a plain value.

An iteration that returns ``Continue(data)`` ends with ``step.continue``: the
step counts it (``iterations``) and, after ``loop_delay`` (a durable timer),
queues the next iteration with ``data`` as its input. Going past
``max_iterations`` or ``max_duration`` (from the first iteration's queueing)
fails the step, saying which bound. A failed iteration is retried, with the
same input, by the step's retry policy.
"""

from __future__ import annotations

from .. import events as ev
from .. import state as st
from ..decision import STARTERS, Decision, start_normal
from ..definition import AgentLoopConfig, StepDef
from ..durations import format_duration
from ..timers import LOOP_DELAY, add_ns, timer
from . import on_fact, on_timer


@on_fact(ev.StepContinue)
def _continued(d: Decision, event: ev.StepContinue) -> None:
    step, state = d.steps.get(event.step_id), d.run.step(event.step_id)
    if step is None or state.status != st.StepStatus.CONTINUING:
        return
    config = step.parsed_config()
    if not isinstance(config, AgentLoopConfig):
        return
    error = _over_bound(config, state, d)
    if error:
        failure = ev.Failure(error=error, failure_type=ev.FailureType.PERMANENT.value)
        d.append(ev.StepFailed, step.id, state.attempts, failure, event_id=f"{step.id}.{state.attempts}.over")
        d.handle_failure(step.id)
    elif config.loop_delay:
        d.actions.append(timer(LOOP_DELAY, add_ns(state.finished_at, int(config.loop_delay)), step.id, state.attempts))
    else:
        next_iteration(d, step)


def _over_bound(config: AgentLoopConfig, state: st.StepState, d: Decision) -> str:
    if state.iterations >= config.max_iterations:
        return f"agent loop exceeded max_iterations ({config.max_iterations})"
    if config.max_duration and state.loop_started_at:
        elapsed = d.now - ev.parse_timestamp(state.loop_started_at)
        if elapsed.total_seconds() * 1e9 >= int(config.max_duration):
            return f"agent loop exceeded max_duration ({format_duration(int(config.max_duration))})"
    return ""


def next_iteration(d: Decision, step: StepDef) -> None:
    state = d.run.step(step.id)
    d.start_again(step, state.attempts + 1)


@on_timer(LOOP_DELAY)
def _delay_over(d: Decision, fire: ev.TimerFire) -> None:
    step, state = d.steps.get(fire.step_id), d.run.step(fire.step_id)
    if (
        step is not None
        and state.status == st.StepStatus.CONTINUING
        and state.attempts == fire.attempt
        and d.run.status == st.RunStatus.RUNNING
    ):
        next_iteration(d, step)


STARTERS["agent_loop"] = start_normal
