"""sleep: wait a duration, until the next occurrence of a cron expression, or until a
time read from the run input; no worker involved.

The step runs from ``step.sleep.started`` (its ``wake_at`` in the state) to
``step.sleep.completed`` (output null), which its durable timer brings. A
wake time already past completes it at once; one more than 365 days away, or
an input value that is not a time, fails it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from .. import events as ev
from .. import state as st
from ..decision import STARTERS, Decision
from ..definition import SleepConfig, StepDef
from ..durations import HOUR
from ..events import parse_timestamp
from ..paths import PathNotFound, extract_dot_path
from ..schedules import CronError, next_occurrence
from ..timers import SLEEP, timer
from . import on_timer

MAX_SLEEP = 365 * 24 * HOUR


def start(d: Decision, step: StepDef, data: Any) -> None:
    config = step.parsed_config()
    assert isinstance(config, SleepConfig)
    try:
        wake = wake_time(config, d.run.input, d.now)
    except ValueError as why:
        d.reject(step, f"sleep: {why}")
        return
    if wake - d.now > timedelta(microseconds=MAX_SLEEP // 1000):
        d.reject(step, f"sleep: wake time {ev.format_timestamp(wake)} is more than 365 days away")
        return
    attempt = d.run.step(step.id).attempts + 1
    wake_at = ev.format_timestamp(max(wake, d.now))
    d.append(ev.StepSleepStarted, step.id, attempt, ev.Sleep(wake_at=wake_at))
    if wake <= d.now:
        d.append(ev.StepSleepCompleted, step.id, attempt)
    else:
        d.actions.append(timer(SLEEP, wake_at, step.id, attempt))


def wake_time(config: SleepConfig, run_input: Any, now: datetime) -> datetime:
    """When a sleep that starts ``now`` ends (raises ValueError naming what is wrong)."""
    if config.duration is not None:
        return now + timedelta(microseconds=int(config.duration) // 1000)
    if config.cron is not None:
        try:
            return next_occurrence(config.cron, now)
        except CronError as err:
            raise ValueError(str(err)) from None
    path = config.until_input_path or ""
    try:
        value = extract_dot_path(run_input, path)
    except PathNotFound:
        raise ValueError(f"until_input_path: the run input has no {path!r}") from None
    return parse_instant(value, f"until_input_path {path!r}")


def parse_instant(value: Any, what: str) -> datetime:
    """An RFC 3339 instant, or milliseconds since the epoch."""
    if isinstance(value, bool):
        raise ValueError(f"{what}: {value!r} is not a time")
    if isinstance(value, (int, float)):
        try:
            return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=value)
        except OverflowError:
            raise ValueError(f"{what}: {value!r} milliseconds is out of range") from None
    if isinstance(value, str):
        try:
            return ev.parse_timestamp(value)
        except ValueError:
            pass
    raise ValueError(f"{what}: {value!r} is not a time (an RFC 3339 instant or milliseconds since the epoch)")


@on_timer(SLEEP)
def _woke(d: Decision, fire: ev.TimerFire) -> None:
    state = d.run.step(fire.step_id)
    if (
        state.status == st.StepStatus.RUNNING
        and state.attempts == fire.attempt
        and state.waiting
        and state.waiting.kind == "sleep"
    ):
        d.append(ev.StepSleepCompleted, fire.step_id, fire.attempt)


STARTERS["sleep"] = start


def asleep_until(run: st.WorkflowRun) -> str | None:
    """When a run that only sleeps wakes first; None for any other run.

    Such a run is running, holds and waits for no limit, and each of its steps has
    ended, is pending (behind a sleep, or an auxiliary step), or sleeps: nothing happens
    in it until a timer (a durable schedule) fires or a fact comes, so its actor can
    passivate meanwhile and be rebuilt by what comes.
    """
    if run.status != st.RunStatus.RUNNING or run.waiting is not None:
        return None
    first = None
    for step in run.steps.values():
        if step.status == st.StepStatus.PENDING or step.status in st.TERMINAL_STEP_STATUSES:
            continue
        waiting = step.waiting
        if step.status != st.StepStatus.RUNNING or waiting is None or waiting.kind != "sleep" or not waiting.due:
            return None
        if first is None or parse_timestamp(waiting.due) < parse_timestamp(first):
            first = waiting.due
    return first
