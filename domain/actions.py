"""Actions: what ``decide`` asks the shell to do, as values.

The RunActor is the only code that turns these into port calls.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .events import Event, TaskPayload
from .limits import LimitRequest


class AppendEvent(msgspec.Struct, frozen=True, tag=True):
    """Record a decision in the run's history (folded like any event)."""

    event: Event


class EnqueueTask(msgspec.Struct, frozen=True, tag=True):
    """Publish a task for workers of ``task`` (in ``group`` if set, offering
    ``capabilities`` if any: the step's ``required_capabilities``)."""

    task: str
    payload: TaskPayload
    group: str = ""
    # Distinguishes a deliberate second publish of the same attempt (a sticky
    # fallback) from a duplicate, in the task's message id.
    variant: str = ""
    capabilities: tuple[str, ...] = ()


class StartTimer(msgspec.Struct, frozen=True, tag=True):
    """Fire a ``timer.fired`` fact into the run at ``due`` (RFC3339), durably."""

    timer_id: str
    due: str
    kind: str
    step_id: str = ""
    attempt: int = 0
    # For a sticky check: the worker whose liveness the fired fact must report.
    worker_id: str = ""
    # A map instance's retry or timeout.
    instance: int | None = None


class CancelTimer(msgspec.Struct, frozen=True, tag=True):
    """Drop a timer the run no longer waits on (its step moved on, or the run ended)."""

    timer_id: str
    kind: str
    step_id: str = ""
    attempt: int = 0


class DropTask(msgspec.Struct, frozen=True, tag=True):
    """Remove still-queued tasks of attempts the run has moved past (timed out, cancelled),
    so no worker spends a slot on them; ``up_to_attempt`` and earlier go."""

    task: str
    run_id: str
    step_id: str
    up_to_attempt: int
    group: str = ""
    # One instance of a map step; None: every task of the step.
    instance: int | None = None
    # The step's required_capabilities: its tasks are on their own subject.
    capabilities: tuple[str, ...] = ()


ALL_ATTEMPTS = 1 << 30


class PublishMessage(msgspec.Struct, frozen=True, tag=True):
    """Send ``payload`` (JSON) on core NATS to ``subject`` (an approval request, an HTTP response), at most once."""

    subject: str
    payload: dict[str, Any]
    # An approval request: the shell mints the one-time token that approves it.
    approval_step: str = ""


class RegisterWaiter(msgspec.Struct, frozen=True, tag=True):
    """Have the correlator hand the step the first ``event`` that matches, from ``since`` on."""

    event: str
    step_id: str
    attempt: int
    left: str
    op: str
    right: Any
    since: str
    expires_at: str


class RemoveWaiter(msgspec.Struct, frozen=True, tag=True):
    event: str
    step_id: str
    op: str
    right: Any


class StartChildRun(msgspec.Struct, frozen=True, tag=True):
    """Start run ``child_run_id`` of ``workflow`` through the same admission as any run."""

    child_run_id: str
    workflow: str
    input: Any
    parent_step_id: str
    attempt: int
    detach: bool = False
    # Where the child sits in its tree (a detached child is a root of its own).
    root_run_id: str = ""
    depth: int = 0
    # The parent's W3C trace state and baggage, which the child carries on.
    trace_state: str = ""
    baggage: str = ""


class Acquire(msgspec.Struct, frozen=True, tag=True):
    """Ask flow control to admit a step's next attempt (or the run): every request must pass.

    The shell answers with a fact it records at once — ``step.admitted`` or
    ``step.limited`` (``workflow.admitted`` / ``workflow.limited`` for a run) —
    so a rebuilt run knows what it holds and never acquires twice."""

    requests: tuple[LimitRequest, ...]
    holder: str
    step_id: str = ""
    attempt: int = 0
    instance: int | None = None


class Release(msgspec.Struct, frozen=True, tag=True):
    """Free the slot ``holder`` holds in pool ``key`` (its attempt, or its run, ended)."""

    key: str
    holder: str


class PublishFact(msgspec.Struct, frozen=True, tag=True):
    """Put a fact into another run's inbox (a child's outcome to its parent, a cancel to a child)."""

    event: Event


class DeadLetter(msgspec.Struct, frozen=True, tag=True):
    """Keep a step that failed for good in DEAD_LETTERS: the task of its last attempt,
    as dispatched, and why (``reason``: non_retriable, failed), for an operator to
    replay or discard. At most once per attempt (its message id names it)."""

    task: str
    payload: TaskPayload
    reason: str
    error: str
    group: str = ""
    capabilities: tuple[str, ...] = ()


class DiscardDeadLetters(msgspec.Struct, frozen=True, tag=True):
    """A replayed step completed: its dead letters have served their purpose."""

    run_id: str
    step_id: str


Action = (
    AppendEvent
    | EnqueueTask
    | StartTimer
    | CancelTimer
    | DropTask
    | PublishMessage
    | RegisterWaiter
    | RemoveWaiter
    | StartChildRun
    | PublishFact
    | Acquire
    | Release
    | DeadLetter
    | DiscardDeadLetters
)
