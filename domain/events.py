"""Events, task payloads and resolutions: the wire types of the protocol.

One ``Event`` shape serves the inbox (facts from outside the run's owner)
and the history (facts as recorded plus the owner's decisions). JSON field
names are the seed protocol's; ``id`` is the event's identity within its
run, from which every ``Nats-Msg-Id`` is derived, so re-sending a fact is
harmless.
"""

from __future__ import annotations

from datetime import datetime, timezone
from enum import Enum
from typing import Any

import msgspec

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
    def parse(cls, value: object) -> "FailureType":
        # The Go engine's names are accepted as aliases.
        aliases = {"non_retriable": "permanent", "retriable": "transient", "retry_after": "rate_limited"}
        text = aliases.get(str(value), str(value)) if value else "transient"
        try:
            return cls(text)
        except ValueError:
            return cls.TRANSIENT


class Event(msgspec.Struct, frozen=True, omit_defaults=True):
    type: str
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
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_timestamp(text: str) -> datetime:
    """Any RFC3339 instant: ours, or a Go peer's (nanoseconds, no fraction, an offset)."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def fact_id(event_type: str, step_id: str = "", attempt: int = 0) -> str:
    """The identity of a fact; retries of the same report share it."""
    parts = [p for p in (step_id, str(attempt) if attempt else "", event_type) if p]
    return ".".join(parts)


EVENT_ENCODER = msgspec.json.Encoder()
EVENT_DECODER = msgspec.json.Decoder(Event)
RECORD_DECODER = msgspec.json.Decoder(list[Event])
TASK_DECODER = msgspec.json.Decoder(TaskPayload)


def encode_record(events: list[Event]) -> bytes:
    """One history message: the events one decision appended together."""
    return EVENT_ENCODER.encode(events)


def decode_record(data: bytes) -> list[Event]:
    """A history message holds a list of events (a single event is accepted too)."""
    if data[:1] == b"[":
        return RECORD_DECODER.decode(data)
    return [EVENT_DECODER.decode(data)]
