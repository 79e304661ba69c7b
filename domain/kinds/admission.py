"""Flow control's side of a run: what admission answers lead to.

A limited step's next attempt waits in ``waiting`` (``step.held``) while the
shell asks flow control; the shell records the answer with the fact that
led to the hold, in the same record: ``step.admitted`` (the attempt starts as
its step type starts, holding the slots it names) or ``step.limited`` (a rate
limit says when a token is free; a slot pool that the step is queued). A
limited step asks again when its ``limit`` timer falls due (a rate limit's
next free token), or — queued in a slot pool — when a release makes it the
slot's holder (flow control puts a ``limit`` timer's fire into its inbox; its
reaper sends it again if the run did not take the slot). Asking again is idempotent: a holder that holds is
granted without counting twice; a rebuilt run asks again for a hold that was
never answered. A run under ``concurrency.max_runs`` waits
``pending`` the same way (``workflow.admitted`` / ``workflow.limited``).
Slots are released when the attempt (or run) that holds or queues for them
ends; ``released`` works that out from the states before and after a fact.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .. import events as ev
from .. import state as st
from ..actions import Acquire, Action, Release
from ..decision import Decision
from ..definition import StepDef, WorkflowDef
from ..limits import holder_id, run_limits, slot_keys, step_limits
from ..timers import LIMIT, timer, timer_id
from . import on_fact, on_recover, on_timer


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
        if d.run.status == st.RunStatus.PENDING and not _stale(d.run.waiting, fire):
            d.actions.append(run_acquire(d.run, d.now_ms))
        return
    step, state = d.steps.get(fire.step_id), d.state_of(fire.step_id, fire.instance)
    if step is None or not _awaits_admission(state) or state.attempts + 1 != fire.attempt:
        return
    if _stale(state.waiting, fire):
        return
    if d.run.status not in (st.RunStatus.RUNNING, st.RunStatus.COMPENSATING):
        # Paused: a slot a release granted it goes to the next in line; it asks on resume.
        holder = holder_id(d.run.run_id, step.id, fire.attempt, fire.instance)
        d.actions += [Release(key, holder) for key in slot_keys(d.defn, step)]
        return
    d.actions.append(step_acquire(d, step, state, fire.instance))


@on_fact(ev.WorkflowResumed)
def _ask_on_resume(d: Decision, event: ev.WorkflowResumed) -> None:
    """A resumed run asks again for every step that waits for admission."""
    for step, attempt, index in _held_attempts(d):
        d.actions.append(step_acquire(d, step, attempt, index))


def _stale(waiting: st.Waiting | None, fire: ev.TimerFire) -> bool:
    """A fire of a timer the run no longer waits on: another copy of one already acted on
    (the server's schedule and the engine's memory both fire a short timer, and a run
    re-arms its timer after a conflict), which asked again and was told a later time.
    Acting on it would ask flow control again for nothing. A wake (a slot granted) has
    no due time and is never stale."""
    return bool(fire.due) and (waiting is None or waiting.due != fire.due)


@on_recover
def _ask_where_no_timer_will(d: Decision) -> None:
    """A rebuilt run asks again for admissions no limit timer will ask for: one never
    answered (the shell stopped between recording the hold and its answer), or a queue
    that gave no time to ask again."""
    waiting = d.run.waiting
    if d.run.status == st.RunStatus.PENDING and (waiting is None or not waiting.due):
        d.actions.append(run_acquire(d.run, d.now_ms))
    for step, attempt, index in _held_attempts(d):
        if not (attempt.waiting is not None and attempt.waiting.due):
            d.actions.append(step_acquire(d, step, attempt, index))


def _held_attempts(d: Decision) -> Iterator[tuple[StepDef, st.StepState, int | None]]:
    """Every step (or map element) whose next attempt waits for admission."""
    for step in d.defn.steps:
        state = d.run.step(step.id)
        instances = state.instances if state.status == st.StepStatus.RUNNING else ()
        for index, attempt in [(None, state), *enumerate(instances)]:
            if _awaits_admission(attempt):
                yield step, attempt, index


def _awaits_admission(state: st.StepState) -> bool:
    return state.status == st.StepStatus.WAITING and not state.admitted


def step_acquire(d: Decision, step: StepDef, state: st.StepState, instance: int | None) -> Acquire:
    """Ask again for a held attempt, ranked from when it was first held (it keeps its place)."""
    attempt = state.attempts + 1
    held_ms = _ms(state.waiting.since) if state.waiting is not None and state.waiting.since else d.now_ms
    requests = step_limits(d.defn, step, d.next_input(step, instance), held_ms)
    return Acquire(tuple(requests), holder_id(d.run.run_id, step.id, attempt, instance), step.id, attempt, instance)


# ---- the shell's answer, as a fact --------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """What flow control said to an ``Acquire``: granted, or which limit says wait."""

    granted: bool
    holds: tuple[str, ...] = ()  # slot pools granted (all of them when granted)
    key: str = ""  # the limit that says wait
    reason: str = ""
    retry_at_ms: int = 0  # a rate limit: when a token is free
    position: int = 0  # a slot pool: the place in its queue
    rate_at_ms: int = 0  # granted: when its rate windows counted it (the latest; 0 with none)


def answer_fact(acquire: Acquire, answer: Answer, now: datetime) -> ev.Event:
    """The fact a run records for flow control's answer (``step.admitted`` / ``step.limited``,
    ``workflow.admitted`` / ``workflow.limited``)."""
    now_ms = int(now.timestamp() * 1000)
    payload: ev.Admission | ev.Limited
    run_cls: type[ev.RunAdmitted | ev.RunLimited]
    step_cls: type[ev.StepAdmitted | ev.StepLimited]
    if answer.granted:
        counted = datetime.fromtimestamp(answer.rate_at_ms / 1000, now.tzinfo) if answer.rate_at_ms else None
        payload = ev.Admission(holds=answer.holds, rate_at=ev.format_timestamp(counted) if counted else "")
        run_cls, step_cls, suffix = ev.RunAdmitted, ev.StepAdmitted, ""
    else:
        until = datetime.fromtimestamp(answer.retry_at_ms / 1000, now.tzinfo) if answer.retry_at_ms else None
        payload = ev.Limited(
            key=answer.key,
            reason=answer.reason,
            until=ev.format_timestamp(until) if until is not None else "",
            position=answer.position,
            holds=answer.holds,
        )
        run_cls, step_cls, suffix = ev.RunLimited, ev.StepLimited, f".{now_ms}"  # (a step is limited many times)
    fields: dict[str, Any] = {"run_id": _run_of(acquire), "timestamp": ev.format_timestamp(now), "payload": payload}
    if not acquire.step_id:
        return run_cls(**fields, id=f"{run_cls.__struct_config__.tag}{suffix}")
    tag: str = step_cls.__struct_config__.tag  # type: ignore[assignment]
    return step_cls(
        **fields,
        step_id=acquire.step_id,
        attempt=acquire.attempt,
        instance=acquire.instance,
        id=ev.fact_id(tag, acquire.step_id, acquire.attempt, acquire.instance) + suffix,
    )


def wake_fact(run_id: str, step_id: str, attempt: int, instance: int | None, now: datetime) -> ev.TimerFired:
    """What flow control puts into a run's inbox when a release makes it a slot's holder: its
    ``limit`` timer, fired now, so the run asks again (and is granted)."""
    timer = timer_id(LIMIT, step_id, attempt, instance)
    fire = ev.TimerFire(timer_id=timer, kind=LIMIT, step_id=step_id, attempt=attempt, instance=instance)
    now_ms = int(now.timestamp() * 1000)
    return ev.TimerFired(
        run_id=run_id,
        step_id=step_id,
        attempt=attempt,
        instance=instance,
        timestamp=ev.format_timestamp(now),
        payload=fire,
        id=f"{timer}.wake.{now_ms}",
    )


def _run_of(acquire: Acquire) -> str:
    return acquire.holder.split(".", 1)[0]


# ---- releases ----------------------------------------------------------------------------------


def released(before: st.WorkflowRun, after: st.WorkflowRun) -> list[Action]:
    """Slots held (or queued for) before by an attempt or run that no longer holds them: a
    run that ended holds nothing, nor do the instances of a map that is no longer under way."""
    defn = before.definition
    if defn is None:
        return []
    run_id = before.run_id
    releases: list[Action] = [Release(key, run_id) for key in before.holds if key not in after.holds]
    if before.status == st.RunStatus.PENDING and after.is_terminal:  # a queued run cancelled
        releases += [Release(r.key, run_id) for r in run_limits(defn, before.input, 0) if r.key not in before.holds]
    steps = defn.step_map()
    for step_id, state in before.steps.items():
        step = steps.get(step_id)
        keys = slot_keys(defn, step) if step is not None else ()
        if not keys:
            continue
        now = st.StepState() if after.is_terminal else after.step(step_id)
        if now is state:
            continue  # unchanged (the fold keeps the same object): it holds what it held
        releases += _released(run_id, step_id, keys, state, now, None)
        later = _holding_instances(now)
        for index, instance in enumerate(_holding_instances(state)):
            instance_after = later[index] if index < len(later) else st.StepState()
            if instance_after is not instance:
                releases += _released(run_id, step_id, keys, instance, instance_after, index)
    return releases


def _holding_instances(state: st.StepState) -> tuple[st.StepState, ...]:
    return state.instances if state.status in st.HOLDING_STEP_STATUSES else ()


def _holding_attempt(state: st.StepState) -> int:
    """The attempt a state's slots belong to: a held step's next one, else its current one."""
    return state.attempts + 1 if state.status == st.StepStatus.WAITING else state.attempts


def _released(
    run_id: str, step_id: str, keys: tuple[str, ...], before: st.StepState, after: st.StepState, instance: int | None
) -> list[Action]:
    if before.status == st.StepStatus.WAITING:
        had = keys  # queued in some pools, holding others: releasing drops it from the queues
    elif before.status in st.IN_FLIGHT_STEP_STATUSES:
        had = before.holds
    else:
        return []
    attempt = _holding_attempt(before)
    if after.status in st.HOLDING_STEP_STATUSES and _holding_attempt(after) == attempt:
        kept = keys if after.status == st.StepStatus.WAITING else after.holds
    else:
        kept = ()
    holder = holder_id(run_id, step_id, attempt, instance)
    return [Release(key, holder) for key in had if key not in kept]


def slot_holders(run: st.WorkflowRun) -> set[str]:
    """Who, of this run, may hold or queue for slots now: the reaper frees the rest (as
    ``released`` does, a map's instances only while the map is under way)."""
    if run.is_terminal:
        return set()
    holders = {run.run_id}
    for step_id, state in run.steps.items():
        for index, each in [(None, state), *enumerate(_holding_instances(state))]:
            if each.status in st.HOLDING_STEP_STATUSES:
                holders.add(holder_id(run.run_id, step_id, _holding_attempt(each), index))
    return holders


def awaiting_admission(run: st.WorkflowRun) -> set[str]:
    """Who, of this run, waits to be admitted: a slot granted to one of them went unnoticed
    (its wake was lost), and the reaper wakes it again."""
    if run.status == st.RunStatus.PENDING:
        return {run.run_id}
    if run.is_terminal:
        return set()
    waiting = set()
    for step_id, state in run.steps.items():
        for index, each in [(None, state), *enumerate(state.instances)]:
            if each.status == st.StepStatus.WAITING and not each.admitted:
                waiting.add(holder_id(run.run_id, step_id, each.attempts + 1, index))
    return waiting


def definition_keys(defn: WorkflowDef) -> set[str]:
    """Every slot pool a workflow's steps and runs may use."""
    keys = {r.key for r in run_limits(defn, None, 0)}
    for step in defn.steps:
        keys.update(slot_keys(defn, step))
    return keys
