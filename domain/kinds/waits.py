"""wait_for_event: the step waits for an external event (``dagnats event publish``)
whose data matches, or for its timeout.

On start the match's right side is resolved (``input.<path>`` or
``step.<id>.output.<path>``) and recorded (``step.wait.started``), and a
waiter is registered with the correlator, which looks it up by event name
(and by the value, for ``eq``). Only events published after the wait began
match. The first match completes the step with the event's data as output
(``step.wait.matched``); a timeout completes it with ``{"timeout": true}``
(``step.wait.timed_out``), so the DAG can branch with skip_if.
"""

from __future__ import annotations

from typing import Any

from .. import events as ev
from .. import state as st
from ..actions import RegisterWaiter, RemoveWaiter
from ..decision import STARTERS, Decision
from ..definition import StepDef, WaitForEventConfig
from ..paths import PathNotFound, extract_dot_path
from ..timers import WAIT_TIMEOUT, timer
from . import on_recover, on_timer


def start(d: Decision, step: StepDef, data: Any) -> None:
    config = step.parsed_config()
    assert isinstance(config, WaitForEventConfig) and config.match is not None
    try:
        right = resolve_right(config.match.right, d.run)
    except LookupError as why:
        d.reject(step, f"wait_for_event: match.right {config.match.right!r}: {why}")
        return
    attempt = d.run.step(step.id).attempts + 1
    wait = ev.WaitStart(
        event=config.event,
        left=config.match.left,
        op=config.match.op,
        right=right,
        since=d.stamp,
        expires_at=d.after(int(config.timeout)),
    )
    d.append(ev.StepWaitStarted, step.id, attempt, wait)
    d.actions.append(waiter(step.id, attempt, wait))
    d.actions.append(timer(WAIT_TIMEOUT, wait.expires_at, step.id, attempt))


def resolve_right(reference: str, run: st.WorkflowRun) -> Any:
    """``input.<path>`` or ``step.<id>.output[.<path>]``, read from the run (raises LookupError)."""
    head, _, rest = reference.partition(".")
    if head == "input":
        source, path = run.input, rest
    else:
        step_id, _, after = rest.partition(".")
        source, path = run.step(step_id).output, after.partition(".")[2]
    if not path:
        return source
    try:
        return extract_dot_path(source, path)
    except PathNotFound:
        raise LookupError("no value there") from None


def waiter(step_id: str, attempt: int, wait: ev.WaitStart) -> RegisterWaiter:
    return RegisterWaiter(wait.event, step_id, attempt, wait.left, wait.op, wait.right, wait.since, wait.expires_at)


@on_timer(WAIT_TIMEOUT)
def _timed_out(d: Decision, fire: ev.TimerFire) -> None:
    state = d.run.step(fire.step_id)
    waiting = state.waiting
    if (
        state.status == st.StepStatus.RUNNING
        and state.attempts == fire.attempt
        and waiting is not None
        and waiting.kind == "event"
    ):
        d.append(ev.StepWaitTimedOut, fire.step_id, fire.attempt)
        d.actions.append(removal(fire.step_id, waiting))


def removal(step_id: str, waiting: st.Waiting) -> RemoveWaiter:
    match = waiting.match or {}
    return RemoveWaiter(waiting.event, step_id, str(match.get("op", "eq")), match.get("right"))


def waits_of(run: st.WorkflowRun) -> list[tuple[str, st.StepState, st.Waiting]]:
    """The steps of ``run`` waiting for an event."""
    return [
        (step_id, state, state.waiting)
        for step_id, state in run.steps.items()
        if state.status == st.StepStatus.RUNNING and state.waiting is not None and state.waiting.kind == "event"
    ]


@on_recover
def _register_again(d: Decision) -> None:
    """A rebuilt run registers its waiters again (idempotent: the same key)."""
    for step_id, state, waiting in waits_of(d.run):
        match = waiting.match or {}
        wait = ev.WaitStart(
            event=waiting.event,
            left=str(match.get("left", "")),
            op=str(match.get("op", "eq")),
            right=match.get("right"),
            since=waiting.since,
            expires_at=waiting.due,
        )
        d.actions.append(waiter(step_id, state.attempts, wait))


STARTERS["wait_for_event"] = start
