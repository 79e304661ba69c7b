"""Timer identities and the timers a run's state wants armed.

A timer id is unique within its run and deterministic, so arming the same
timer twice (after a restart, say) is harmless, and a fire that no longer
matches the state is ignored by ``decide``. ``wanted_timers`` reads them off
the state: what a rebuilt run re-arms, and (before minus after) what a
decision cancels.
"""

from __future__ import annotations

from datetime import timedelta
from itertools import compress, count
from operator import is_not

from . import state as st
from .actions import StartTimer
from .definition import AgentLoopConfig, StepDef
from .events import TimerFire, TimerFired, format_timestamp, parse_timestamp

RETRY = "retry"
STEP_TIMEOUT = "step_timeout"
DEADLINE = "deadline"
STICKY_FALLBACK = "sticky_fallback"
STICKY_FALLBACK_NS = 5_000_000_000
STICKY_CHECK = "sticky_check"
STICKY_CHECK_NS = 2_000_000_000
SLEEP = "sleep"
APPROVAL_TIMEOUT = "approval_timeout"
WAIT_TIMEOUT = "wait_timeout"
LOOP_DELAY = "loop_delay"
LIMIT = "limit"  # a step or run held by flow control asks again

# What an engine-run step waits for -> the timer that ends the wait.
_WAIT_TIMERS = {"sleep": SLEEP, "approval": APPROVAL_TIMEOUT, "event": WAIT_TIMEOUT}


def timer_id(kind: str, step_id: str = "", attempt: int = 0, instance: int | None = None) -> str:
    parts = [kind.replace("_", "-")] + ([step_id] if step_id else [])
    parts += [f"i{instance}"] if instance is not None else []
    parts += [str(attempt)] if attempt else []
    return "-".join(parts)


def timer(
    kind: str, due: str, step_id: str = "", attempt: int = 0, instance: int | None = None, worker_id: str = ""
) -> StartTimer:
    return StartTimer(timer_id(kind, step_id, attempt, instance), due, kind, step_id, attempt, worker_id, instance)


def retry_timer(step_id: str, attempt: int, due: str, instance: int | None = None) -> StartTimer:
    return timer(RETRY, due, step_id, attempt, instance)


def step_timeout_timer(step_id: str, attempt: int, due: str, instance: int | None = None) -> StartTimer:
    return timer(STEP_TIMEOUT, due, step_id, attempt, instance)


def deadline_timer(due: str) -> StartTimer:
    return timer(DEADLINE, due)


def sticky_fallback_timer(step_id: str, attempt: int, due: str) -> StartTimer:
    return timer(STICKY_FALLBACK, due, step_id, attempt)


def sticky_check_timer(step_id: str, attempt: int, due: str, worker_id: str) -> StartTimer:
    """Asks, when due, whether the worker running a soft-sticky step is still alive
    (re-armed after each check while the step runs)."""
    return timer(STICKY_CHECK, due, step_id, attempt, worker_id=worker_id)


def add_ns(timestamp: str, ns: int) -> str:
    return format_timestamp(parse_timestamp(timestamp) + timedelta(microseconds=ns // 1000))


def wanted_timers(run: st.WorkflowRun) -> list[StartTimer]:
    """Every timer the run's current state waits on."""
    if run.definition is None or run.is_terminal:
        return []
    wanted = _run_timers(run)
    for step in run.definition.steps:
        state = run.step(step.id)
        wanted += _step_timers(run, step, state)
        for index, instance in enumerate(state.instances):
            wanted += _attempt_timers(step, instance, index)
    return wanted


def changed_timers(before: st.WorkflowRun, after: st.WorkflowRun) -> tuple[list[StartTimer], list[StartTimer]]:
    """The timers ``before`` and ``after`` wait on, as far as they can differ: steps (and map
    elements) whose state did not change — the same object, as the fold leaves them — wait
    on the same timers and are left out, so a map element's fact costs no walk over the
    map's thousands of elements."""
    if (
        before.definition is None
        or before.definition is not after.definition
        or before.is_terminal
        or after.is_terminal
        or before.sticky_worker != after.sticky_worker
    ):
        return wanted_timers(before), wanted_timers(after)
    run_level = (_run_timers(before), _run_timers(after))
    old, new = list(run_level[0]), list(run_level[1])
    for step in before.definition.steps:
        was, now = before.step(step.id), after.step(step.id)
        if was is now:
            continue
        old += _step_timers(before, step, was)
        new += _step_timers(after, step, now)
        for index in _changed_indexes(was.instances, now.instances):
            a = was.instances[index] if index < len(was.instances) else None
            b = now.instances[index] if index < len(now.instances) else None
            old += _attempt_timers(step, a, index) if a is not None else []
            new += _attempt_timers(step, b, index) if b is not None else []
    return old, new


def _changed_indexes(was: tuple[st.StepState, ...], now: tuple[st.StepState, ...]) -> list[int]:
    """Where two element tuples hold other objects (compared at C speed: maps are long)."""
    changed = list(compress(count(), map(is_not, was, now)))
    return changed + list(range(min(len(was), len(now)), max(len(was), len(now))))


def _run_timers(run: st.WorkflowRun) -> list[StartTimer]:
    assert run.definition is not None
    wanted = []
    if run.definition.timeout and run.created_at:
        wanted.append(deadline_timer(add_ns(run.created_at, int(run.definition.timeout))))
    if run.status == st.RunStatus.PENDING and run.waiting is not None and run.waiting.due:
        wanted.append(timer(LIMIT, run.waiting.due))
    return wanted


def _step_timers(run: st.WorkflowRun, step: StepDef, state: st.StepState) -> list[StartTimer]:
    waiting = state.waiting
    if state.status == st.StepStatus.RUNNING and waiting is not None and waiting.kind in _WAIT_TIMERS:
        return [timer(_WAIT_TIMERS[waiting.kind], waiting.due, step.id, state.attempts)] if waiting.due else []
    if state.status == st.StepStatus.CONTINUING:
        delay = _loop_delay(step)
        return [timer(LOOP_DELAY, add_ns(state.finished_at, delay), step.id, state.attempts)] if delay else []
    wanted = _attempt_timers(step, state)
    if state.status == st.StepStatus.RUNNING and watches_worker(run, state) and state.started_at:
        check = add_ns(state.started_at, STICKY_CHECK_NS)
        wanted.append(sticky_check_timer(step.id, state.attempts, check, state.worker_id))
    elif (
        state.status == st.StepStatus.QUEUED
        and run.definition
        and run.definition.sticky == "soft"
        and run.sticky_worker
    ):
        wanted.append(sticky_fallback_timer(step.id, state.attempts, add_ns(state.queued_at, STICKY_FALLBACK_NS)))
    return wanted


def _attempt_timers(step: StepDef, state: st.StepState, instance: int | None = None) -> list[StartTimer]:
    """A worker's attempt: its retry backoff, its timeout while it runs, or when it asks
    flow control again."""
    waiting = state.waiting
    if state.status == st.StepStatus.WAITING and not state.admitted and waiting is not None and waiting.due:
        return [timer(LIMIT, waiting.due, step.id, state.attempts + 1, instance)]
    if state.status == st.StepStatus.RETRYING and state.retry_at:
        return [retry_timer(step.id, state.attempts, state.retry_at, instance)]
    if (
        state.status == st.StepStatus.RUNNING
        and step.timeout
        and state.started_at
        and not state.instances
        and (state.waiting is None or state.waiting.kind == "signal")
    ):
        return [step_timeout_timer(step.id, state.attempts, add_ns(state.started_at, int(step.timeout)), instance)]
    return []


def _loop_delay(step: StepDef) -> int:
    config = step.parsed_config()
    return int(config.loop_delay) if isinstance(config, AgentLoopConfig) else 0


def watches_worker(run: st.WorkflowRun, state: st.StepState) -> bool:
    """A soft-sticky step running on its run's worker: checked so a dead worker does not hold it."""
    return bool(
        run.definition and run.definition.sticky == "soft" and state.worker_id and state.worker_id == run.sticky_worker
    )


def fired_event(run_id: str, timer: StartTimer, trace_parent: str = "") -> TimerFired:
    """The fact a timer puts into its run's inbox when it falls due (stamped with its due time:
    the same fact whether the server's schedule or the engine's memory fires it)."""
    return TimerFired(
        run_id=run_id,
        timestamp=timer.due,
        payload=TimerFire(
            timer_id=timer.timer_id,
            kind=timer.kind,
            step_id=timer.step_id,
            attempt=timer.attempt,
            worker_id=timer.worker_id,
            due=timer.due,
            instance=timer.instance,
        ),
        trace_parent=trace_parent,
        # One fact per arming: a timer re-armed for another time (a sticky check) fires anew.
        id=f"timer.{timer.timer_id}.{timer.due}",
    )
