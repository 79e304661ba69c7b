"""Events, task payloads and resolutions: the wire types of the protocol.

One event shape serves the inbox (facts from outside the run's owner) and
the history (facts as recorded plus the owner's decisions). Each event type
is its own frozen Struct, tagged by ``type`` (a msgspec tagged union,
``Event``), with a typed ``payload``: decoded once at the edge, read as
fields by ``fold`` and ``decide``. JSON field names are the seed protocol's;
``id`` is the event's identity within its run, from which every
``Nats-Msg-Id`` is derived, so re-sending a fact is harmless.

A new event type is one payload struct (if it carries data), one event
class here, one fold rule and one transition row.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import Enum
from typing import Any

import msgspec

from .definition import WorkflowDef

# Workflow-scoped
WORKFLOW_STARTED = "workflow.started"
WORKFLOW_COMPLETED = "workflow.completed"
WORKFLOW_FAILED = "workflow.failed"
WORKFLOW_CANCELLED = "workflow.cancelled"
WORKFLOW_PAUSE_REQUESTED = "workflow.pause_requested"
WORKFLOW_PAUSED = "workflow.paused"
WORKFLOW_RESUMED = "workflow.resumed"
WORKFLOW_COMPENSATING = "workflow.compensating"
WORKFLOW_COMPENSATED = "workflow.compensated"
WORKFLOW_COMPENSATE_FAILED = "workflow.compensate_failed"
# Step-scoped, reported by workers
STEP_STARTED = "step.started"
STEP_COMPLETED = "step.completed"
STEP_FAILED = "step.failed"
STEP_CONTINUE = "step.continue"
# Step-scoped, decided by the engine
STEP_QUEUED = "step.queued"
STEP_RETRY_SCHEDULED = "step.retry_scheduled"
STEP_SKIPPED = "step.skipped"
STEP_RECOVERED = "step.recovered"
# Approvals
APPROVAL_GRANTED = "approval.granted"
APPROVAL_REJECTED = "approval.rejected"
# Timers
TIMER_FIRED = "timer.fired"

WORKER_FACTS = frozenset({STEP_STARTED, STEP_COMPLETED, STEP_FAILED, STEP_CONTINUE})


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


# ---- payloads ---------------------------------------------------------------------


class _Payload(msgspec.Struct, frozen=True, omit_defaults=True):
    """Payloads accept fields they do not know: a newer peer may add some."""


class RunStart(_Payload, frozen=True):
    """``workflow.started``: the definition the run follows for its whole life, and its input."""

    workflow_def: WorkflowDef
    input: Any = None


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


class TimerFire(_Payload, frozen=True):
    timer_id: str = ""
    kind: str = ""
    step_id: str = ""
    attempt: int = 0
    # For a sticky check: the worker whose liveness the shell saw when it fired.
    worker_id: str = ""
    worker_alive: bool = True
    due: str = ""


# ---- events -----------------------------------------------------------------------


class EventBase(msgspec.Struct, frozen=True, omit_defaults=True, tag_field="type"):
    """Fields every event has; ``type`` is the class's tag."""

    run_id: str
    step_id: str = ""
    timestamp: str = ""
    payload: Any = None
    trace_parent: str = ""
    attempt: int = 0
    worker_id: str = ""
    id: str = ""
    # On a worker's result: when the attempt started, for a step whose
    # step.started was never sent (it finished before the worker reported it).
    started_at: str = ""

    @property
    def type(self) -> str:
        return self.__struct_config__.tag  # type: ignore[return-value]


class WorkflowStarted(EventBase, frozen=True, tag=WORKFLOW_STARTED):
    payload: RunStart | None = None


class WorkflowCompleted(EventBase, frozen=True, tag=WORKFLOW_COMPLETED):
    payload: RunOutput = RunOutput()


class WorkflowFailed(EventBase, frozen=True, tag=WORKFLOW_FAILED):
    payload: RunEnd = RunEnd()


class WorkflowCancelled(EventBase, frozen=True, tag=WORKFLOW_CANCELLED):
    payload: RunEnd = RunEnd()


class WorkflowPauseRequested(EventBase, frozen=True, tag=WORKFLOW_PAUSE_REQUESTED):
    pass


class WorkflowPaused(EventBase, frozen=True, tag=WORKFLOW_PAUSED):
    pass


class WorkflowResumed(EventBase, frozen=True, tag=WORKFLOW_RESUMED):
    pass


class WorkflowCompensating(EventBase, frozen=True, tag=WORKFLOW_COMPENSATING):
    payload: Compensation = Compensation()


class WorkflowCompensated(EventBase, frozen=True, tag=WORKFLOW_COMPENSATED):
    payload: RunEnd = RunEnd()


class WorkflowCompensateFailed(EventBase, frozen=True, tag=WORKFLOW_COMPENSATE_FAILED):
    payload: RunEnd = RunEnd()


class StepStarted(EventBase, frozen=True, tag=STEP_STARTED):
    pass


class StepCompleted(EventBase, frozen=True, tag=STEP_COMPLETED):
    """``payload`` is the step's output, any JSON value."""


class StepFailed(EventBase, frozen=True, tag=STEP_FAILED):
    # A bare string is accepted as the error (a terse worker).
    payload: Failure | str | None = None

    @property
    def failure(self) -> Failure:
        if isinstance(self.payload, Failure):
            return self.payload
        return Failure(error=self.payload or "")


class StepContinue(EventBase, frozen=True, tag=STEP_CONTINUE):
    """``payload`` is the next iteration's input."""


class StepQueued(EventBase, frozen=True, tag=STEP_QUEUED):
    payload: Queued = Queued()


class StepRetryScheduled(EventBase, frozen=True, tag=STEP_RETRY_SCHEDULED):
    payload: RetryScheduled = RetryScheduled()


class StepSkipped(EventBase, frozen=True, tag=STEP_SKIPPED):
    payload: Skipped = Skipped()


class StepRecovered(EventBase, frozen=True, tag=STEP_RECOVERED):
    payload: Recovered = Recovered()


class ApprovalGranted(EventBase, frozen=True, tag=APPROVAL_GRANTED):
    pass


class ApprovalRejected(EventBase, frozen=True, tag=APPROVAL_REJECTED):
    pass


class TimerFired(EventBase, frozen=True, tag=TIMER_FIRED):
    payload: TimerFire = TimerFire()


Event = (
    WorkflowStarted
    | WorkflowCompleted
    | WorkflowFailed
    | WorkflowCancelled
    | WorkflowPauseRequested
    | WorkflowPaused
    | WorkflowResumed
    | WorkflowCompensating
    | WorkflowCompensated
    | WorkflowCompensateFailed
    | StepStarted
    | StepCompleted
    | StepFailed
    | StepContinue
    | StepQueued
    | StepRetryScheduled
    | StepSkipped
    | StepRecovered
    | ApprovalGranted
    | ApprovalRejected
    | TimerFired
)
EVENT_CLASSES: dict[str, type[EventBase]] = {cls.__struct_config__.tag: cls for cls in Event.__args__}
EVENT_TYPES = frozenset(EVENT_CLASSES)


def make_event(type: str, run_id: str, payload: Any = None, **fields: Any) -> Event:
    """An event of ``type`` with its payload given as plain data (converted to its struct).

    Raises ValueError for an unknown type, msgspec.ValidationError for a payload that does not fit.
    """
    cls = EVENT_CLASSES.get(type)
    if cls is None:
        raise ValueError(f"unknown event type {type!r}")
    if payload is None:
        return cls(run_id=run_id, **fields)  # type: ignore[return-value]
    if not isinstance(payload, msgspec.Struct):
        payload = msgspec.convert(payload, _PAYLOAD_TYPES[cls])
    return cls(run_id=run_id, payload=payload, **fields)  # type: ignore[return-value]


_PAYLOAD_TYPES: dict[type, Any] = {
    cls: next(f.type for f in msgspec.structs.fields(cls) if f.name == "payload") for cls in EVENT_CLASSES.values()
}


class TaskPayload(msgspec.Struct, frozen=True, omit_defaults=True):
    """Published to ``task.<task>[.<group>].<run>`` when a step is dispatched."""

    task_id: str
    run_id: str
    step_id: str
    attempt: int = 1
    iteration: int = 0
    input: Any = None
    task: str = ""
    workflow_name: str = ""
    timeout_ns: int = 0
    traceparent: str = ""


class TaskResolution(msgspec.Struct, frozen=True, omit_defaults=True):
    """How a worker resolves a task (the bridge's shape)."""

    action: str
    output: Any = None
    error: str = ""
    failure_type: str = ""
    retry_after_ms: int = 0
    duration_ms: int = 0
    checkpoint: Any = None
    data: Any = None


def format_timestamp(moment: datetime) -> str:
    """RFC3339 in UTC with microseconds (Python's resolution)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_timestamp(text: str) -> datetime:
    """Any RFC3339 instant: ours, or a Go peer's (nanoseconds, no fraction, an offset)."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def fact_id(event_type: str, step_id: str = "", attempt: int = 0) -> str:
    """The identity of a fact; retries of the same report share it."""
    parts = [p for p in (step_id, str(attempt) if attempt else "", event_type) if p]
    return ".".join(parts)


EVENT_ENCODER = msgspec.json.Encoder()
EVENT_DECODER = msgspec.json.Decoder(Event)
RECORD_DECODER = msgspec.json.Decoder(list[Event])
TASK_DECODER = msgspec.json.Decoder(TaskPayload)


def encode_event(event: Event) -> bytes:
    return EVENT_ENCODER.encode(event)


def decode_event(data: bytes) -> Event:
    """One event (raises msgspec.DecodeError or ValidationError, a DecodeError too)."""
    return EVENT_DECODER.decode(data)


def encode_record(events: list[Event]) -> bytes:
    """One history message: the events one decision appended together."""
    return EVENT_ENCODER.encode(events)


def decode_record(data: bytes) -> list[Event]:
    """A history message holds a list of events (a single event is accepted too)."""
    if data[:1] == b"[":
        return RECORD_DECODER.decode(data)
    return [EVENT_DECODER.decode(data)]
