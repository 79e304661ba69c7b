"""Flow control's side of a run: what admission answers lead to.

A limited step's next attempt waits in ``waiting`` (``step.held``) while the
shell asks flow control; its answer is recorded as a fact: ``step.admitted``
(the attempt starts as its step type starts, holding the slots it names) or
``step.limited`` (a rate limit says when a token is free; a slot pool that the
step is queued). A limited step asks again when its ``limit`` timer falls
due — at that time for a rate, every ``RECHECK`` for a queue, which a
release normally pre-empts by admitting it; a rebuilt run asks again for a
hold that was never answered. A run under
``concurrency.max_runs`` waits ``pending`` the same way (``workflow.admitted``
/ ``workflow.limited``). Slots are released when the attempt (or run) that
holds them ends (``evolve`` works that out from the state).
"""

from __future__ import annotations

from .. import events as ev
from .. import state as st
from ..actions import Acquire, Action, Release
from ..decision import Decision
from ..definition import StepDef
from ..limits import holder_id, run_limits, step_limits
from ..timers import LIMIT, timer
from . import on_fact, on_recover, on_timer

# A queued step or run asks again this often, in case its admission was not delivered.
RECHECK_NS = 15_000_000_000


@on_fact(ev.StepAdmitted)
def _admitted(d: Decision, event: ev.StepAdmitted) -> None:
    step, state = d.steps.get(event.step_id), d.state_of(event.step_id, event.instance)
    if step is not None and state.status == st.StepStatus.WAITING and state.admitted:
        d.start_admitted(step, event.instance)


@on_fact(ev.StepLimited)
def _step_limited(d: Decision, event: ev.StepLimited) -> None:
    state = d.state_of(event.step_id, event.instance)
    waiting = state.waiting
    if state.status == st.StepStatus.WAITING and not state.admitted and waiting is not None and waiting.due:
        d.actions.append(timer(LIMIT, waiting.due, event.step_id, state.attempts + 1, event.instance))


@on_fact(ev.RunLimited)
def _run_limited(d: Decision, event: ev.RunLimited) -> None:
    if d.run.status == st.RunStatus.PENDING and d.run.waiting is not None and d.run.waiting.due:
        d.actions.append(timer(LIMIT, d.run.waiting.due))


@on_fact(ev.WorkflowStarted)
def _run_admission(d: Decision, event: ev.WorkflowStarted) -> None:
    if d.run.status == st.RunStatus.PENDING:
        d.actions.append(run_acquire(d.run, d.now_ms))


def run_acquire(run: st.WorkflowRun, now_ms: int) -> Acquire:
    assert run.definition is not None
    created = _ms(run.created_at) if run.created_at else now_ms
    return Acquire(tuple(run_limits(run.definition, run.input, created)), holder_id(run.run_id))


def _ms(stamp: str) -> int:
    return int(ev.parse_timestamp(stamp).timestamp() * 1000)


@on_timer(LIMIT)
def _ask_again(d: Decision, fire: ev.TimerFire) -> None:
    if not fire.step_id:
        if d.run.status == st.RunStatus.PENDING:
            d.actions.append(run_acquire(d.run, d.now_ms))
        return
    step, state = d.steps.get(fire.step_id), d.state_of(fire.step_id, fire.instance)
    if step is not None and _awaits_admission(state) and state.attempts + 1 == fire.attempt:
        d.actions.append(step_acquire(d, step, state, fire.instance))


@on_recover
def _ask_where_no_timer_will(d: Decision) -> None:
    """A rebuilt run asks again for admissions no limit timer will ask for: one never
    answered (the shell stopped between recording the hold and its answer), or a queue
    that gave no time to ask again."""
    waiting = d.run.waiting
    if d.run.status == st.RunStatus.PENDING and (waiting is None or not waiting.due):
        d.actions.append(run_acquire(d.run, d.now_ms))
    for step in d.defn.steps:
        state = d.run.step(step.id)
        instances = state.instances if state.status == st.StepStatus.RUNNING else ()
        for index, attempt in [(None, state), *enumerate(instances)]:
            if _awaits_admission(attempt) and not (attempt.waiting is not None and attempt.waiting.due):
                d.actions.append(step_acquire(d, step, attempt, index))


def _awaits_admission(state: st.StepState) -> bool:
    return state.status == st.StepStatus.WAITING and not state.admitted


def step_acquire(d: Decision, step: StepDef, state: st.StepState, instance: int | None) -> Acquire:
    """Ask again for a held attempt, ranked from when it was first held (it keeps its place)."""
    attempt = state.attempts + 1
    held_ms = _ms(state.waiting.since) if state.waiting is not None and state.waiting.since else d.now_ms
    requests = step_limits(d.defn, step, d.next_input(step, instance), held_ms)
    return Acquire(tuple(requests), holder_id(d.run.run_id, step.id, attempt, instance), step.id, attempt, instance)


def released(before: st.WorkflowRun, after: st.WorkflowRun) -> list[Action]:
    """Slots held before whose attempt (or run) no longer holds them: a run that ended
    holds nothing, nor do the instances of a map that is no longer under way."""
    releases: list[Action] = []
    for key in before.holds:
        if key not in after.holds:
            releases.append(Release(key, holder_id(before.run_id)))
    for step_id, state in before.steps.items():
        now = st.StepState() if after.is_terminal else after.step(step_id)
        releases += _released(before.run_id, step_id, state, now, None)
        later = _holding_instances(now)
        for index, instance in enumerate(_holding_instances(state)):
            instance_after = later[index] if index < len(later) else st.StepState()
            releases += _released(before.run_id, step_id, instance, instance_after, index)
    return releases


def _holding_instances(state: st.StepState) -> tuple[st.StepState, ...]:
    return state.instances if state.status in st.HOLDING_STEP_STATUSES else ()


def _released(
    run_id: str, step_id: str, before: st.StepState, after: st.StepState, instance: int | None
) -> list[Action]:
    if not before.holds:
        return []
    holder = holder_id(run_id, step_id, before.attempts, instance)
    kept = after.holds if after.attempts == before.attempts else ()
    return [Release(key, holder) for key in before.holds if key not in kept]
