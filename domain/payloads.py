"""Event payloads: what each event (``events.py``) carries besides the fields every event has.

Each is a frozen Struct, decoded once at the edge with its event and read as
fields by ``fold`` and ``decide``. JSON field names are the seed protocol's.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

import msgspec

from .definition import StepDef, WorkflowDef


class FailureType(str, Enum):
    """Why an attempt failed: decides whether the engine retries it."""

    PERMANENT = "permanent"
    TRANSIENT = "transient"
    RATE_LIMITED = "rate_limited"

    @classmethod
    def parse(cls, value: object) -> FailureType:
        # The Go engine's names are accepted as aliases.
        aliases = {"non_retriable": "permanent", "retriable": "transient", "retry_after": "rate_limited"}
        text = aliases.get(str(value), str(value)) if value else "transient"
        try:
            return cls(text)
        except ValueError:
            return cls.TRANSIENT


class _Payload(msgspec.Struct, frozen=True, omit_defaults=True):
    """Payloads accept fields they do not know: a newer peer may add some.

    A payload also reads as the JSON object it is stored as (``payload["output"]``,
    ``payload.get("error")``): scripts written when decoded payloads were dicts go on
    working."""

    def __getitem__(self, key: str) -> Any:
        if key not in self.__struct_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default) if key in self.__struct_fields__ else default


class RunStart(_Payload, frozen=True):
    """``workflow.started``: the definition the run follows for its whole life, and its input."""

    workflow_def: WorkflowDef
    input: Any = None
    # A child run (sub_workflow): its parent, the parent's step and attempt, the tree's root.
    parent_run_id: str = ""
    parent_step_id: str = ""
    parent_attempt: int = 0
    root_run_id: str = ""
    depth: int = 0
    # W3C trace context beside the event's ``trace_parent``: the caller's vendor
    # state and baggage (validated at the start; carried to every task).
    trace_state: str = ""
    baggage: str = ""


class RepeatedStart(_Payload, frozen=True):
    """``workflow.start_repeated``: the caller's traceparent (and tracestate) of a start
    that was answered with this run."""

    caller: str = ""
    trace_state: str = ""


class RunOutput(_Payload, frozen=True):
    output: Any = None
    # Set instead of ``output`` when the output is the outputs of the sink steps,
    # which the run already holds (a large output is not recorded twice).
    output_from_sinks: bool = False


class RunEnd(_Payload, frozen=True):
    """Why a run failed, was cancelled, or ended its compensation."""

    error: str = ""
    reason: str = ""

    @property
    def text(self) -> str:
        return self.error or self.reason


class Compensation(_Payload, frozen=True):
    chain: tuple[str, ...] = ()
    trigger_step: str = ""
    trigger_error: str = ""


class Queued(_Payload, frozen=True):
    task: str = ""
    input: Any = None
    # Set instead of ``input`` for a large input the run's state already holds:
    # "wiring" (what the step's wiring resolves to at this point of the history)
    # or "previous" (the input of the step's previous attempt). See fold.py.
    input_from: str = ""


class Failure(_Payload, frozen=True):
    error: str = ""
    failure_type: str = ""
    # A worker's hint, clamped by ``decide``: any JSON value is accepted.
    retry_after_ms: Any = None
    timeout: bool = False
    worker_lost: bool = False


class RetryScheduled(_Payload, frozen=True):
    retry_at: str = ""
    delay_ms: int = 0
    error: str = ""


class Skipped(_Payload, frozen=True):
    reason: str = ""
    cascade: bool = False


class Recovered(_Payload, frozen=True):
    handler: str = ""


class Replay(_Payload, frozen=True):
    """Who replayed a failed step, and the dead letter (its DEAD_LETTERS sequence) replayed."""

    by: str = ""
    dead_letter_seq: int = 0


class Sleep(_Payload, frozen=True):
    wake_at: str = ""


class ApprovalRequest(_Payload, frozen=True):
    subject: str = ""
    description: str = ""
    metadata: dict[str, str] | None = None
    expires_at: str = ""


class ApprovalDecision(_Payload, frozen=True):
    """An approve carries a comment (the step's output is the decision); a reject a reason."""

    comment: str = ""
    reason: str = ""
    by: str = ""
    data: Any = None


class WaitStart(_Payload, frozen=True):
    """A wait_for_event: the event name and the match, its right side resolved when the wait began."""

    event: str = ""
    left: str = ""
    op: str = "eq"
    right: Any = None
    since: str = ""
    expires_at: str = ""


class EventMatch(_Payload, frozen=True):
    data: Any = None
    seq: int = 0


class WaitingFor(_Payload, frozen=True):
    """A worker's handler waits on something (a signal) outside the engine."""

    kind: str = "signal"
    name: str = ""
    due: str = ""


class Child(_Payload, frozen=True):
    child_run_id: str = ""
    workflow: str = ""
    detach: bool = False


class ChildResult(_Payload, frozen=True):
    child_run_id: str = ""
    status: str = ""
    output: Any = None
    error: str = ""


class MapStart(_Payload, frozen=True):
    count: int = 0


class Fragment(_Payload, frozen=True):
    """Steps added to a run while it runs (a planner's plan, a handler's add_step)."""

    steps: tuple[StepDef, ...] = ()


class Hold(_Payload, frozen=True):
    """The limits a step (or run) must pass before it starts, by key."""

    keys: tuple[str, ...] = ()
    reason: str = ""


class Limited(_Payload, frozen=True):
    """The flow control's answer to an admission it could not grant yet."""

    key: str = ""
    reason: str = ""
    until: str = ""  # when it asks again: a rate limit's next free token, or a queue's recheck
    position: int = 0  # a slot pool: the place in its queue (1 = next)
    holds: tuple[str, ...] = ()  # slots already granted while another limit says wait


class Admission(_Payload, frozen=True):
    """An admission granted: the pool keys whose slots the attempt (or run) now holds, and
    the instant its rate windows counted it at (the latest of them; empty with none)."""

    holds: tuple[str, ...] = ()
    rate_at: str = ""


class TimerFire(_Payload, frozen=True):
    timer_id: str = ""
    kind: str = ""
    step_id: str = ""
    attempt: int = 0
    # For a sticky check: the worker whose liveness the shell saw when it fired.
    worker_id: str = ""
    worker_alive: bool = True
    due: str = ""
    instance: int | None = None
