"""Timer identities and the timers a run's state wants armed.

A timer id is unique within its run and deterministic, so arming the same
timer twice (after a restart, say) is harmless, and a fire that no longer
matches the state is ignored by ``decide``.
"""

from __future__ import annotations

from datetime import timedelta

from . import state as st
from .actions import StartTimer
from .events import TimerFire, TimerFired, format_timestamp, parse_timestamp

RETRY = "retry"
STEP_TIMEOUT = "step_timeout"
DEADLINE = "deadline"
STICKY_FALLBACK = "sticky_fallback"
STICKY_FALLBACK_NS = 5_000_000_000
STICKY_CHECK = "sticky_check"
STICKY_CHECK_NS = 2_000_000_000


def timer_id(kind: str, step_id: str = "", attempt: int = 0) -> str:
    parts = [kind.replace("_", "-")] + ([step_id] if step_id else []) + ([str(attempt)] if attempt else [])
    return "-".join(parts)


def retry_timer(step_id: str, attempt: int, due: str) -> StartTimer:
    return StartTimer(timer_id(RETRY, step_id, attempt), due, RETRY, step_id, attempt)


def step_timeout_timer(step_id: str, attempt: int, due: str) -> StartTimer:
    return StartTimer(timer_id(STEP_TIMEOUT, step_id, attempt), due, STEP_TIMEOUT, step_id, attempt)


def deadline_timer(due: str) -> StartTimer:
    return StartTimer(timer_id(DEADLINE), due, DEADLINE)


def sticky_fallback_timer(step_id: str, attempt: int, due: str) -> StartTimer:
    return StartTimer(timer_id(STICKY_FALLBACK, step_id, attempt), due, STICKY_FALLBACK, step_id, attempt)


def sticky_check_timer(step_id: str, attempt: int, due: str, worker_id: str) -> StartTimer:
    """Asks, when due, whether the worker running a soft-sticky step is still alive
    (re-armed after each check while the step runs)."""
    return StartTimer(timer_id(STICKY_CHECK, step_id, attempt), due, STICKY_CHECK, step_id, attempt, worker_id)


def add_ns(timestamp: str, ns: int) -> str:
    return format_timestamp(parse_timestamp(timestamp) + timedelta(microseconds=ns // 1000))


def wanted_timers(run: st.WorkflowRun) -> list[StartTimer]:
    """Every timer the run's current state waits on (used when rebuilding a run)."""
    if run.definition is None or run.is_terminal:
        return []
    wanted = []
    if run.definition.timeout and run.created_at:
        wanted.append(deadline_timer(add_ns(run.created_at, int(run.definition.timeout))))
    for step in run.definition.steps:
        state = run.step(step.id)
        if state.status == st.StepStatus.RETRYING and state.retry_at:
            wanted.append(retry_timer(step.id, state.attempts, state.retry_at))
        elif state.status == st.StepStatus.RUNNING:
            if step.timeout and state.started_at:
                wanted.append(step_timeout_timer(step.id, state.attempts, add_ns(state.started_at, int(step.timeout))))
            if watches_worker(run, state) and state.started_at:
                wanted.append(
                    sticky_check_timer(
                        step.id, state.attempts, add_ns(state.started_at, STICKY_CHECK_NS), state.worker_id
                    )
                )
        elif state.status == st.StepStatus.QUEUED and run.definition.sticky == "soft" and run.sticky_worker:
            wanted.append(sticky_fallback_timer(step.id, state.attempts, add_ns(state.queued_at, STICKY_FALLBACK_NS)))
    return wanted


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
        ),
        trace_parent=trace_parent,
        # One fact per arming: a timer re-armed for another time (a sticky check) fires anew.
        id=f"timer.{timer.timer_id}.{timer.due}",
    )
