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

from .definition import StepDef, WorkflowDef

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


class TaskPayload(msgspec.Struct, frozen=True, omit_defaults=True):
    """Published to ``task.<task>[.<group>].<run>`` when a step is dispatched."""

    task_id: str
    run_id: str
    step_id: str
    attempt: int = 1
    # agent_loop: which iteration (0 for the first); map: which element.
    iteration: int = 0
    instance: int | None = None
    input: Any = None
    task: str = ""
    workflow_name: str = ""
    timeout_ns: int = 0
    traceparent: str = ""
    tracestate: str = ""
    baggage: str = ""
    # The step's metadata (role, model, ...): for the handler, as ctx.metadata.
    metadata: dict[str, str] | None = None
    step_type: str = ""


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


def fact_id(event_type: str, step_id: str = "", attempt: int = 0, instance: int | None = None) -> str:
    """The identity of a fact; retries of the same report share it."""
    index = f"i{instance}" if instance is not None else ""
    parts = [p for p in (step_id, index, str(attempt) if attempt else "", event_type) if p]
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
