"""Spans as a projection of a run's history.

Theory of operation: a run's trace is computed from its recorded events,
never from what a process happened to see live, so it survives any crash
and re-projecting a history yields the same spans with the same ids.

    run span       ``workflow.started`` -> the terminal event; root of the
                   run's spans (or a child of the caller's span when the run
                   was started with a ``traceparent``).
    attempt span   one per (step, map instance, attempt): from the event that
                   opened it (``step.queued``, ``step.sleep.started``, ...) to
                   its result; always a child of the run span, so parenting
                   never deepens with the chain. A step with dependencies
                   links to each dependency's last attempt span (a join has
                   several links).
    queue span     child of a worker step's attempt span: queued -> started.
    repeated start a start answered with this run (``workflow.start_repeated``):
                   a point in time under the run span, linked to the caller's
                   span; the run span links it too while it is still open.

Every span carries the run's W3C ``tracestate`` (``RunStart.trace_state``).

Span ids are the first 8 bytes of sha256(run|step|instance|attempt|kind) and
a trace id without a valid incoming ``traceparent`` is derived from the run
id the same way: exporting twice exports the same spans. A worker computes
its parent (the attempt span) from the task's ``traceparent``, which the
engine sets with ``attempt_trace_parent``.

``RunTrace.apply(events)`` folds one history record and returns the spans
that record finished; annotations made within the record still reach spans
it finished (a retry decision follows the failure it answers).
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from . import events as ev
from .trace_context import parse_trace_parent

RUN, ATTEMPT, QUEUE, REPEATED_START = "run", "attempt", "queue", "repeated_start"
OK, ERROR, UNSET = "ok", "error", "unset"

TERMINAL = {
    ev.WORKFLOW_COMPLETED: OK,
    ev.WORKFLOW_FAILED: ERROR,
    ev.WORKFLOW_CANCELLED: UNSET,
    ev.WORKFLOW_COMPENSATED: ERROR,
    ev.WORKFLOW_COMPENSATE_FAILED: ERROR,
}
# Events that open a step attempt (its span starts at the first of them).
OPENING = frozenset(
    {
        ev.STEP_QUEUED,
        ev.STEP_HELD,
        ev.STEP_SLEEP_STARTED,
        ev.STEP_WAIT_STARTED,
        ev.APPROVAL_REQUESTED,
        ev.CHILD_STARTED,
        ev.STEP_MAP_STARTED,
    }
)
# Events that end a step attempt, and the status they give it.
CLOSING = {
    ev.STEP_COMPLETED: OK,
    ev.STEP_CONTINUE: OK,  # an agent loop's iteration; the next is the next attempt
    ev.STEP_FAILED: ERROR,
    ev.STEP_SKIPPED: UNSET,
    ev.STEP_SLEEP_COMPLETED: OK,
    ev.STEP_WAIT_MATCHED: OK,
    ev.STEP_WAIT_TIMED_OUT: ERROR,
    ev.APPROVAL_GRANTED: OK,
    ev.APPROVAL_REJECTED: ERROR,
    ev.CHILD_COMPLETED: OK,
    ev.CHILD_FAILED: ERROR,
    ev.STEP_MAP_COMPLETED: OK,
}
# Facts recorded on a span as span events (the step's attempt if open, else the run).
ANNOTATIONS = frozenset(
    {
        ev.STEP_RETRY_SCHEDULED,
        ev.TIMER_FIRED,
        ev.STEP_WAITING,
        ev.STEP_LIMITED,
        ev.STEP_ADMITTED,
        ev.STEP_RECOVERED,
        ev.STEP_REPLAYED,
        ev.RUN_LIMITED,
        ev.RUN_ADMITTED,
        ev.WORKFLOW_PAUSE_REQUESTED,
        ev.WORKFLOW_PAUSED,
        ev.WORKFLOW_RESUMED,
        ev.WORKFLOW_COMPENSATING,
        ev.STEPS_ADDED,
        ev.PLANNER_MATERIALIZED,
        ev.PLANNER_REJECTED,
        ev.PLANNER_COMPLETED,
    }
)


class SpanEvent(msgspec.Struct, frozen=True):
    name: str
    at: str
    attributes: dict[str, Any] = {}


class SpanLink(msgspec.Struct, frozen=True):
    trace_id: str
    span_id: str
    attributes: dict[str, Any] = {}


class Span(msgspec.Struct):
    """One span; ``end`` is empty while it is open. Times are the events' timestamps."""

    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: str
    start: str
    end: str = ""
    status: str = UNSET
    error: str = ""
    step_id: str = ""
    attempt: int = 0
    instance: int | None = None
    attributes: dict[str, Any] = {}
    events: list[SpanEvent] = []
    links: list[SpanLink] = []
    trace_state: str = ""


def span_id(run_id: str, kind: str, step_id: str = "", attempt: int = 0, instance: int | None = None) -> str:
    """The deterministic id of one span: 16 hex digits, never all zero."""
    key = f"{run_id}|{step_id}|{'' if instance is None else instance}|{attempt}|{kind}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return digest if digest != "0" * 16 else "0" * 15 + "1"


def derived_trace_id(run_id: str) -> str:
    return hashlib.sha256(f"trace|{run_id}".encode()).hexdigest()[:32]


def run_trace_parent(trace_id: str, run_id: str) -> str:
    """The traceparent of a run that starts its own trace: it names the run's own span,
    which the projection then makes the trace's root."""
    return f"00-{trace_id}-{span_id(run_id, RUN)}-01"


def attempt_trace_parent(trace_parent: str, run_id: str, step_id: str, attempt: int, instance: int | None) -> str:
    """The traceparent a task carries: its attempt span in the run's trace."""
    parsed = parse_trace_parent(trace_parent)
    trace_id, flags = (parsed[0], parsed[2]) if parsed else (derived_trace_id(run_id), "01")
    return f"00-{trace_id}-{span_id(run_id, ATTEMPT, step_id, attempt, instance)}-{flags}"


def trace_id_of(run_id: str, trace_parent: str) -> str:
    parsed = parse_trace_parent(trace_parent)
    return parsed[0] if parsed else derived_trace_id(run_id)


class RunTrace:
    """The spans of one run, folded record by record."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.workflow = ""
        self.trace_id = derived_trace_id(run_id)
        self.trace_state = ""
        self.run: Span | None = None
        self.open: dict[tuple[str, int | None, int], Span] = {}
        self.queues: dict[tuple[str, int | None, int], Span] = {}
        self.done: set[tuple[str, int | None, int]] = set()
        self.last_attempt: dict[str, str] = {}
        self.repeated: set[str] = set()  # callers' span ids of repeated starts linked
        self.deps: dict[str, tuple[str, ...]] = {}
        self.tasks: dict[str, str] = {}
        self.finished: list[Span] = []  # every finished span, in order
        self.last_seq = 0
        self._closing: list[Span] = []

    @property
    def ended(self) -> bool:
        return self.run is not None and bool(self.run.end)

    def spans(self) -> list[Span]:
        """Every span so far, finished then open (open ones have no ``end``)."""
        opened = [self.run] if self.run is not None and not self.run.end else []
        return self.finished + opened + list(self.open.values()) + list(self.queues.values())

    def apply(self, events: list[ev.Event], seq: int = 0) -> list[Span]:
        """Fold one record; return the spans it finished."""
        self._closing = []
        for event in events:
            self._event(event)
        self.last_seq = seq or self.last_seq
        self.finished += self._closing
        return self._closing

    # ---- one event ------------------------------------------------------------------

    def _event(self, event: ev.Event) -> None:
        kind = event.type
        if kind == ev.WORKFLOW_STARTED:
            self._started(event)  # type: ignore[arg-type]
        elif kind == ev.WORKFLOW_START_REPEATED:
            self._repeated(event)  # type: ignore[arg-type]
        elif self.run is None or self.run.end:
            return  # nothing before the start; nothing after the end
        elif kind in TERMINAL:
            self._terminal(event, TERMINAL[kind])
        elif kind == ev.STEPS_ADDED and isinstance(event.payload, ev.Fragment):
            self._add_steps(event.payload.steps)
            self._annotate(event)
        elif kind in OPENING:
            self._opening(event)
        elif kind == ev.STEP_STARTED:
            self._step_started(event)
        elif kind in CLOSING:
            self._close(event, CLOSING[kind])
        elif kind in ANNOTATIONS:
            self._annotate(event)

    def _started(self, event: ev.WorkflowStarted) -> None:
        if self.run is not None or event.payload is None:
            return
        start = event.payload
        wf = start.workflow_def
        self.workflow = wf.name
        parsed = parse_trace_parent(event.trace_parent)
        own = span_id(self.run_id, RUN)
        self.trace_id = parsed[0] if parsed else derived_trace_id(self.run_id)
        self.trace_state = start.trace_state if parsed else ""
        parent = parsed[1] if parsed and parsed[1] != own else ""
        links: list[SpanLink] = []
        attributes: dict[str, Any] = {"dagnats.run_id": self.run_id, "dagnats.workflow": wf.name}
        if wf.version:
            attributes["dagnats.workflow.version"] = wf.version
        if start.parent_run_id:
            attributes["dagnats.parent_run_id"] = start.parent_run_id
            attributes["dagnats.parent_step_id"] = start.parent_step_id
            parent_span = span_id(start.parent_run_id, ATTEMPT, start.parent_step_id, start.parent_attempt)
            links.append(SpanLink(self.trace_id, parent_span, {"dagnats.link": "parent_step"}))
        self.run = Span(
            self.trace_id,
            own,
            parent,
            f"run {wf.name}",
            RUN,
            event.timestamp,
            attributes=attributes,
            links=links,
            trace_state=self.trace_state,
        )
        self._add_steps(wf.steps)

    def _repeated(self, event: ev.WorkflowStartRepeated) -> None:
        """A start answered with this run: a point span under the run span, linked to the
        caller's span (which may be in another trace); even after the run ended."""
        caller = parse_trace_parent(event.payload.caller)
        if self.run is None or caller is None or caller[1] in self.repeated:
            return
        self.repeated.add(caller[1])
        link = SpanLink(caller[0], caller[1], {"dagnats.link": "repeated_start"})
        if not self.run.end and link not in self.run.links:
            self.run.links.append(link)
        span = Span(
            self.trace_id,
            span_id(self.run_id, REPEATED_START, caller[1]),
            self.run.span_id,
            "start again",
            REPEATED_START,
            event.timestamp,
            attributes={"dagnats.run_id": self.run_id, "dagnats.deduplicated": True},
            links=[link],
            trace_state=self.trace_state,
        )
        self._finish(span, event.timestamp, OK)

    def _add_steps(self, steps: Any) -> None:
        for step in steps:
            self.deps[step.id] = tuple(step.depends_on or ())
            self.tasks[step.id] = step.task or ""

    def _terminal(self, event: ev.Event, status: str) -> None:
        assert self.run is not None
        for key in list(self.queues):
            self._finish(self.queues.pop(key), event.timestamp, UNSET)
        for key, span in list(self.open.items()):
            span.attributes["dagnats.outcome"] = "abandoned"
            self._finish(span, event.timestamp, UNSET)
            del self.open[key]
            self.done.add(key)
        error = getattr(event.payload, "text", "") if status == ERROR else ""
        self.run.attributes["dagnats.status"] = event.type.removeprefix("workflow.")
        self._finish(self.run, event.timestamp, status, error)

    # ---- attempts -------------------------------------------------------------------

    @staticmethod
    def _key(event: ev.Event) -> tuple[str, int | None, int]:
        return event.step_id, event.instance, event.attempt

    def _attempt(self, event: ev.Event, start: str = "") -> Span | None:
        """The attempt span ``event`` belongs to, opened now if it is not yet; None once done."""
        key = self._key(event)
        if not event.step_id or key in self.done:
            return None
        span = self.open.get(key)
        if span is None:
            assert self.run is not None
            step, instance, attempt = key
            attributes: dict[str, Any] = {
                "dagnats.run_id": self.run_id,
                "dagnats.step_id": step,
                "dagnats.attempt": attempt,
            }
            if self.tasks.get(step):
                attributes["dagnats.task"] = self.tasks[step]
            if instance is not None:
                attributes["dagnats.instance"] = instance
            links = [
                SpanLink(self.trace_id, self.last_attempt[dep], {"dagnats.link": "depends_on", "dagnats.step_id": dep})
                for dep in self.deps.get(step, ())
                if dep in self.last_attempt
            ]
            name = f"step {step}" if instance is None else f"step {step}[{instance}]"
            span = Span(
                self.trace_id,
                span_id(self.run_id, ATTEMPT, step, attempt, instance),
                self.run.span_id,
                name,
                ATTEMPT,
                start or event.timestamp,
                step_id=step,
                attempt=attempt,
                instance=instance,
                attributes=attributes,
                links=links,
                trace_state=self.trace_state,
            )
            self.open[key] = span
        return span

    def _opening(self, event: ev.Event) -> None:
        span = self._attempt(event)
        if span is None:
            return
        span.attributes.setdefault("dagnats.step_type", _STEP_TYPES.get(event.type, "task"))
        if event.type == ev.STEP_QUEUED:
            key = self._key(event)
            if key not in self.queues:
                step, instance, attempt = key
                queue_id = span_id(self.run_id, QUEUE, step, attempt, instance)
                self.queues[key] = Span(
                    self.trace_id,
                    queue_id,
                    span.span_id,
                    "queued",
                    QUEUE,
                    event.timestamp,
                    step_id=step,
                    attempt=attempt,
                    trace_state=self.trace_state,
                )
            span.events.append(SpanEvent("queued", event.timestamp))
        elif event.type != ev.STEP_QUEUED:
            span.events.append(SpanEvent(event.type, event.timestamp, _details(event)))

    def _step_started(self, event: ev.Event) -> None:
        span = self._attempt(event, event.started_at)
        if span is None:
            return
        if event.worker_id:
            span.attributes["dagnats.worker_id"] = event.worker_id
        self._end_queue(event, event.started_at or event.timestamp)

    def _end_queue(self, event: ev.Event, at: str) -> None:
        queue = self.queues.pop(self._key(event), None)
        span = self.open.get(self._key(event))
        if queue is not None:
            self._finish(queue, at, OK)
            if span is not None:
                span.attributes["dagnats.queue_ms"] = _millis(queue.start, at)

    def _close(self, event: ev.Event, status: str) -> None:
        span = self._attempt(event, event.started_at)
        if span is None:
            return  # a duplicate or stale result: the attempt already ended
        if event.type == ev.STEP_SKIPPED:
            span.attributes["dagnats.skipped"] = getattr(event.payload, "reason", "") or "skipped"
        self._end_queue(event, event.started_at or event.timestamp)
        if event.worker_id:
            span.attributes["dagnats.worker_id"] = event.worker_id
        error = ""
        if status == ERROR:
            payload = event.payload
            error = getattr(payload, "error", "") or getattr(payload, "reason", "") or event.type
            for name in ("failure_type", "timeout", "worker_lost"):
                value = getattr(payload, name, None)
                if value:
                    span.attributes[f"dagnats.{name}"] = value
            span.events.append(SpanEvent("exception", event.timestamp, {"exception.message": error}))
        span.attributes["dagnats.outcome"] = event.type
        key = self._key(event)
        del self.open[key]
        self.done.add(key)
        self.last_attempt[event.step_id] = span.span_id
        self._finish(span, event.timestamp, status, error)

    def _annotate(self, event: ev.Event) -> None:
        assert self.run is not None
        step, attempt = event.step_id, event.attempt
        if isinstance(event.payload, ev.TimerFire) and event.payload.step_id:
            step, attempt = event.payload.step_id, event.payload.attempt
        target = self.open.get((step, event.instance, attempt)) or self._just_closed(step) or self.run
        target.events.append(SpanEvent(event.type, event.timestamp, _details(event)))

    def _just_closed(self, step: str) -> Span | None:
        """A span of ``step`` this record finished (a retry follows the failure it answers)."""
        for span in reversed(self._closing):
            if span.kind == ATTEMPT and span.step_id == step:
                return span
        return None

    def _finish(self, span: Span, at: str, status: str, error: str = "") -> None:
        span.end = max(at, span.start) if at and span.start else at or span.start
        span.status, span.error = status, error
        self._closing.append(span)


_STEP_TYPES = {
    ev.STEP_SLEEP_STARTED: "sleep",
    ev.STEP_WAIT_STARTED: "wait_for_event",
    ev.APPROVAL_REQUESTED: "approval",
    ev.CHILD_STARTED: "sub_workflow",
    ev.STEP_MAP_STARTED: "map",
}


def _details(event: ev.Event) -> dict[str, Any]:
    """A few scalar fields of an event's payload, as span-event attributes."""
    payload = event.payload
    out: dict[str, Any] = {}
    if isinstance(payload, msgspec.Struct):
        for name in payload.__struct_fields__:
            value = getattr(payload, name)
            if isinstance(value, str | int | float | bool) and value not in ("", None):
                out[f"dagnats.{name}"] = value
    return out


def _millis(start: str, end: str) -> int:
    try:
        return max(0, int((ev.parse_timestamp(end) - ev.parse_timestamp(start)).total_seconds() * 1000))
    except (ValueError, TypeError):
        return 0


def project(records: list[tuple[int, list[ev.Event]]], run_id: str) -> RunTrace:
    """Fold a whole history (records of (seq, events)) into its trace."""
    trace = RunTrace(run_id)
    for seq, events in records:
        trace.apply(events, seq)
    return trace
