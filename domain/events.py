"""Events: the wire types of the protocol, and their codecs.

One event shape serves the inbox (facts from outside the run's owner) and
the history (facts as recorded plus the owner's decisions). Each event type
is its own frozen Struct, tagged by ``type`` (a msgspec tagged union,
``Event``), with a typed ``payload``: decoded once at the edge, read as
fields by ``fold`` and ``decide``. JSON field names are the seed protocol's;
``id`` is the event's identity within its run, from which every
``Nats-Msg-Id`` is derived, so re-sending a fact is harmless.

A new event type is one payload struct (if it carries data, in
``payloads.py``), one event class here, one fold rule and one transition row.
The task messages between the engine and its workers are in ``tasks.py``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

# Payloads and task messages live in their own modules; they are re-exported here,
# where the protocol's callers have always found them (``ev.RunStart``, ``ev.TaskPayload``).
from .payloads import Admission as Admission
from .payloads import ApprovalDecision as ApprovalDecision
from .payloads import ApprovalRequest as ApprovalRequest
from .payloads import Child as Child
from .payloads import ChildResult as ChildResult
from .payloads import Compensation as Compensation
from .payloads import EventMatch as EventMatch
from .payloads import Failure as Failure
from .payloads import FailureType as FailureType
from .payloads import Fragment as Fragment
from .payloads import Hold as Hold
from .payloads import Limited as Limited
from .payloads import MapStart as MapStart
from .payloads import Queued as Queued
from .payloads import Recovered as Recovered
from .payloads import RepeatedStart as RepeatedStart
from .payloads import Replay as Replay
from .payloads import RetryScheduled as RetryScheduled
from .payloads import RunEnd as RunEnd
from .payloads import RunOutput as RunOutput
from .payloads import RunStart as RunStart
from .payloads import Skipped as Skipped
from .payloads import Sleep as Sleep
from .payloads import TimerFire as TimerFire
from .payloads import WaitingFor as WaitingFor
from .payloads import WaitStart as WaitStart
from .tasks import TASK_DECODER as TASK_DECODER
from .tasks import TaskPayload as TaskPayload
from .tasks import TaskResolution as TaskResolution

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
# A start that named a run already started (its id, its idempotency key) by a caller
# with a trace of its own: the run's trace links to the caller's span.
WORKFLOW_START_REPEATED = "workflow.start_repeated"
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
# An operator replays a step that failed for good (from its dead letter): the run runs it again.
STEP_REPLAYED = "step.replayed"
# Step types the engine runs itself, or that wait for something outside a worker
STEP_SLEEP_STARTED = "step.sleep.started"
STEP_SLEEP_COMPLETED = "step.sleep.completed"
STEP_WAIT_STARTED = "step.wait.started"
STEP_WAIT_MATCHED = "step.wait.matched"
STEP_WAIT_TIMED_OUT = "step.wait.timed_out"
STEP_WAITING = "step.waiting"
STEP_MAP_STARTED = "step.map.started"
STEP_MAP_COMPLETED = "step.map.completed"
CHILD_STARTED = "workflow.child.started"
CHILD_COMPLETED = "workflow.child.completed"
CHILD_FAILED = "workflow.child.failed"
PLANNER_MATERIALIZED = "planner.materialized"
PLANNER_REJECTED = "planner.rejected"
PLANNER_COMPLETED = "planner.completed"
STEPS_ADDED = "steps.added"
# Flow control: a step or run held by a limit, told to wait, admitted
STEP_HELD = "step.held"
STEP_LIMITED = "step.limited"
STEP_ADMITTED = "step.admitted"
RUN_LIMITED = "workflow.limited"
RUN_ADMITTED = "workflow.admitted"
# Approvals
APPROVAL_REQUESTED = "approval.requested"
APPROVAL_GRANTED = "approval.granted"
APPROVAL_REJECTED = "approval.rejected"
# Timers
TIMER_FIRED = "timer.fired"

WORKER_FACTS = frozenset({STEP_STARTED, STEP_COMPLETED, STEP_FAILED, STEP_CONTINUE, STEPS_ADDED, STEP_WAITING})


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
    # A map step's facts about one of its instances (the index of its element).
    instance: int | None = None

    @property
    def type(self) -> str:
        return self.__struct_config__.tag  # type: ignore[return-value]


class WorkflowStarted(EventBase, frozen=True, tag=WORKFLOW_STARTED):
    payload: RunStart | None = None


class WorkflowStartRepeated(EventBase, frozen=True, tag=WORKFLOW_START_REPEATED):
    payload: RepeatedStart = RepeatedStart()


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


class StepReplayed(EventBase, frozen=True, tag=STEP_REPLAYED):
    """``attempt`` is the failed attempt replayed; the next one starts at once."""

    payload: Replay = Replay()


class StepSleepStarted(EventBase, frozen=True, tag=STEP_SLEEP_STARTED):
    payload: Sleep = Sleep()


class StepSleepCompleted(EventBase, frozen=True, tag=STEP_SLEEP_COMPLETED):
    pass


class ApprovalRequested(EventBase, frozen=True, tag=APPROVAL_REQUESTED):
    payload: ApprovalRequest = ApprovalRequest()


class ApprovalGranted(EventBase, frozen=True, tag=APPROVAL_GRANTED):
    payload: ApprovalDecision = ApprovalDecision()


class ApprovalRejected(EventBase, frozen=True, tag=APPROVAL_REJECTED):
    payload: ApprovalDecision = ApprovalDecision()


class StepWaitStarted(EventBase, frozen=True, tag=STEP_WAIT_STARTED):
    payload: WaitStart = WaitStart()


class StepWaitMatched(EventBase, frozen=True, tag=STEP_WAIT_MATCHED):
    payload: EventMatch = EventMatch()


class StepWaitTimedOut(EventBase, frozen=True, tag=STEP_WAIT_TIMED_OUT):
    pass


class StepWaiting(EventBase, frozen=True, tag=STEP_WAITING):
    payload: WaitingFor = WaitingFor()


class ChildStarted(EventBase, frozen=True, tag=CHILD_STARTED):
    payload: Child = Child()


class ChildCompleted(EventBase, frozen=True, tag=CHILD_COMPLETED):
    payload: ChildResult = ChildResult()


class ChildFailed(EventBase, frozen=True, tag=CHILD_FAILED):
    payload: ChildResult = ChildResult()


class StepMapStarted(EventBase, frozen=True, tag=STEP_MAP_STARTED):
    payload: MapStart = MapStart()


class StepMapCompleted(EventBase, frozen=True, tag=STEP_MAP_COMPLETED):
    pass


class PlannerMaterialized(EventBase, frozen=True, tag=PLANNER_MATERIALIZED):
    payload: Fragment = Fragment()


class PlannerRejected(EventBase, frozen=True, tag=PLANNER_REJECTED):
    payload: RunEnd = RunEnd()


class PlannerCompleted(EventBase, frozen=True, tag=PLANNER_COMPLETED):
    pass


class StepsAdded(EventBase, frozen=True, tag=STEPS_ADDED):
    payload: Fragment = Fragment()


class StepHeld(EventBase, frozen=True, tag=STEP_HELD):
    """A ready step waits for admission; ``attempt`` is the attempt it will start as."""

    payload: Hold = Hold()


class StepLimited(EventBase, frozen=True, tag=STEP_LIMITED):
    payload: Limited = Limited()


class StepAdmitted(EventBase, frozen=True, tag=STEP_ADMITTED):
    payload: Admission = Admission()


class RunLimited(EventBase, frozen=True, tag=RUN_LIMITED):
    payload: Limited = Limited()


class RunAdmitted(EventBase, frozen=True, tag=RUN_ADMITTED):
    payload: Admission = Admission()


class TimerFired(EventBase, frozen=True, tag=TIMER_FIRED):
    payload: TimerFire = TimerFire()


Event = (
    WorkflowStarted
    | WorkflowStartRepeated
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
    | StepReplayed
    | ApprovalRequested
    | ApprovalGranted
    | ApprovalRejected
    | StepSleepStarted
    | StepSleepCompleted
    | StepWaitStarted
    | StepWaitMatched
    | StepWaitTimedOut
    | StepWaiting
    | ChildStarted
    | ChildCompleted
    | ChildFailed
    | StepMapStarted
    | StepMapCompleted
    | PlannerMaterialized
    | PlannerRejected
    | PlannerCompleted
    | StepsAdded
    | StepHeld
    | StepLimited
    | StepAdmitted
    | RunLimited
    | RunAdmitted
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


def format_timestamp(moment: datetime) -> str:
    """RFC3339 in UTC with microseconds (Python's resolution)."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")[:-6] + "Z"  # [:-6]: "+00:00"


def parse_timestamp(text: str) -> datetime:
    """Any RFC3339 instant: ours, or a Go peer's (nanoseconds, no fraction, an offset)."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def fact_id(event_type: str, step_id: str = "", attempt: int = 0, instance: int | None = None) -> str:
    """The identity of a fact; retries of the same report share it."""
    index = f"i{instance}" if instance is not None else ""
    parts = [p for p in (step_id, index, str(attempt) if attempt else "", event_type) if p]
    return ".".join(parts)


EVENT_ENCODER = msgspec.json.Encoder()
EVENT_DECODER = msgspec.json.Decoder(Event)
RECORD_DECODER = msgspec.json.Decoder(list[Event])


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
