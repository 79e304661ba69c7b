"""Starting runs: a user's start request, and a sub_workflow's child, through one admission.

A start checks the workflow can run and its input (JSON, the input schema),
then admits the run — idempotency key, singleton lock, cancel_on waiters —
and hands its ``workflow.started`` fact to the run's owner, which stores it
in the run's history (or, if no owner takes it in time, publishes it into the
run's inbox). An explicit run id already taken answers the same start with
that run, and anything else with RunAlreadyStarted (as Temporal's "already
started"): the owner tells a start that came after one (REPEATED: the run's
history held a start, found by the append that expected none), as the
inbox's message id tells a start that raced another one there; a start
the owner did not answer in time waits for the run's first recorded start
and compares (a racing one the busy owner took is in the history, not the
inbox). A workflow with admission rules has its history read first, so the
same start again claims nothing; so is a start the owner did not take,
before the inbox. A child run is started the same way, carrying its
parent's ids.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import jsonschema
from nats.js import JetStreamContext

from dagnats.domain import events as ev
from dagnats.domain.actions import StartChildRun
from dagnats.domain.decide import unsupported_step_type
from dagnats.domain.definition import EXECUTED_STEP_TYPES, WorkflowDef
from dagnats.domain.errors import (
    InvalidInput,
    PayloadTooLarge,
    RunAlreadyStarted,
    Unavailable,
    UnsupportedStepType,
)
from dagnats.domain.identifiers import check_identifier
from dagnats.domain.partition import partition_of
from dagnats.domain.run_context import run_context
from dagnats.domain.trace_spans import attempt_trace_parent
from dagnats.domain.values import json_problem

from ..tracing import api_span, incoming_baggage, incoming_state, valid_trace_parent
from ..wire import control as wire
from ..wire.facts import publish_fact
from ..wire.handoff import LATE, NOT_STORED, REPEATED, STORED, ask_owner
from ..wire.lean import requester
from ..wire.subjects import handoff_subject
from .admission import Admission
from .definitions import Definitions
from .reader import RunReader

log = logging.getLogger("dagnats.engine")
CancelBy = Callable[[str, str, str], Awaitable[None]]


START_HANDOFF_TIMEOUT = 1.0  # seconds
# How long a start the owner did not answer in time waits for the run's first recorded
# start (its own, from the inbox, or a racing one the owner took), reading the history
# after START_CONFIRM_POLL, then twice as long each time (a busy owner is not read from
# ten times a second by every start it keeps waiting); past it the start is answered as
# stored in the inbox.
START_CONFIRM_WAIT = 5.0
START_CONFIRM_POLL = 0.1


class RunStarts:
    def __init__(
        self,
        js: JetStreamContext,
        defs: Definitions,
        admission: Admission,
        reader: RunReader,
        max_payload: int,
        cancel_by: CancelBy,
        partitions: int | None = None,
        here: Callable[[ev.Event], asyncio.Future[bytes] | None] | None = None,
    ) -> None:
        self.js, self.defs, self.admission, self.reader = js, defs, admission, reader
        self.max_payload, self.cancel_by, self.partitions = max_payload, cancel_by, partitions
        self.here = here  # hands a start to this process's engine, when it owns the run

    async def start_run(self, req: wire.StartRun) -> dict[str, Any]:
        wf = await self.defs.get(check_identifier("workflow name", req.workflow))
        self._check_start(wf, req.input)
        run_id = check_identifier("run id", req.run_id or secrets.token_hex(16))
        caller = req.trace_parent if valid_trace_parent(req.trace_parent) else None
        # A tracestate belongs to the traceparent it came with; baggage stands alone. Checked
        # before the span (which carries it), logged as about the run.
        with run_context(run_id, "", caller or ""):
            trace_state = incoming_state(req.trace_state, "startRun") if caller else ""
        with (
            api_span("startRun", req.trace_parent, run_id, trace_state) as trace_parent,
            run_context(run_id, "", trace_parent),
        ):
            start = ev.RunStart(
                workflow_def=wf,
                input=req.input,
                trace_state=trace_state,
                baggage=incoming_baggage(req.baggage, "startRun"),
            )
            event = ev.WorkflowStarted(
                run_id=run_id,
                timestamp=ev.format_timestamp(_now()),
                trace_parent=trace_parent,
                payload=start,
                id=ev.WORKFLOW_STARTED,
            )
            answer = None
            explicit = bool(req.run_id) and not req.new_run
            # With admission to pass, the history is read first: the same start again is
            # answered before it claims or takes anything.
            read_first = explicit and self.admission.applies(wf, req.idempotency_key)
            if read_first:
                answer = await self._same_run(event, await self.reader.recorded_start(run_id))
            if answer is None:
                answer = await self._start(
                    wf, event, req.idempotency_key, unread=explicit and not read_first, explicit=explicit
                )
            if caller and answer.get("deduplicated"):
                await self._link_repeated(answer["run_id"], caller, start.trace_state)
            return answer

    async def _link_repeated(self, run_id: str, caller: str, trace_state: str) -> None:
        """A start answered with an existing run links the caller's trace to that run, through
        a fact its history records (the projection exports it); never fails the start."""
        fact = ev.WorkflowStartRepeated(
            run_id=run_id,
            timestamp=ev.format_timestamp(_now()),
            payload=ev.RepeatedStart(caller=caller, trace_state=trace_state),
            id=f"start_repeated.{caller.split('-')[2]}",
        )
        try:
            await publish_fact(self.js, fact)
        except Exception as err:  # noqa: BLE001 - a trace link is not worth a failed start
            log.warning("run %s: cannot link the repeated start's trace: %s", run_id, err)

    async def start_child(self, child: StartChildRun, parent_run_id: str, trace_parent: str) -> dict[str, Any]:
        """Start a sub_workflow's child run through the same admission as any run (raises
        a DagnatsError when it cannot start: the parent step then fails with it)."""
        wf = await self.defs.get(child.workflow)
        self._check_start(wf, child.input)
        if child.detach:
            start = ev.RunStart(
                workflow_def=wf, input=child.input, trace_state=child.trace_state, baggage=child.baggage
            )
        else:
            start = ev.RunStart(
                workflow_def=wf,
                input=child.input,
                parent_run_id=parent_run_id,
                parent_step_id=child.parent_step_id,
                parent_attempt=child.attempt,
                root_run_id=child.root_run_id,
                depth=child.depth,
                trace_state=child.trace_state,
                baggage=child.baggage,
            )
        # The child's run span is a child of its parent step's attempt span, in the parent's trace.
        step_span = attempt_trace_parent(trace_parent, parent_run_id, child.parent_step_id, child.attempt, None)
        with (
            api_span("startChildRun", step_span, child.child_run_id) as span_parent,
            run_context(child.child_run_id, "", span_parent),
        ):
            event = ev.WorkflowStarted(
                run_id=child.child_run_id,
                timestamp=ev.format_timestamp(_now()),
                trace_parent=span_parent,
                payload=start,
                id=ev.WORKFLOW_STARTED,
            )
            existing = await self._same_run(event, await self.reader.recorded_start(child.child_run_id))
            # An attached child is its parent step's run (its id says so): the workflow's
            # idempotency key would hand a second parent the first one's child, which
            # never reports to it.
            return existing or await self._start(wf, event, None, idempotent=child.detach, explicit=True)

    def _check_start(self, wf: WorkflowDef, data: Any) -> None:
        unsupported = [s for s in wf.steps if s.type not in EXECUTED_STEP_TYPES]
        if unsupported:
            raise UnsupportedStepType(wf.name, unsupported_step_type(unsupported[0]))
        problem = json_problem(data)
        if problem:
            raise InvalidInput(f"run input: {problem}")
        if wf.input_schema is not None:
            _check_schema(wf.input_schema, data)

    async def _same_run(self, event: ev.WorkflowStarted, first: ev.WorkflowStarted | None) -> dict[str, Any] | None:
        """An explicit run id already started (``first``): the same start again is answered
        with the run; anything else is a conflict, as Temporal's "already started"."""
        if first is None or first.payload is None or event.payload is None:
            return None
        if (
            first.payload.workflow_def.name == event.payload.workflow_def.name
            and first.payload.input == event.payload.input
        ):
            return {"run_id": event.run_id, "deduplicated": True}
        raise RunAlreadyStarted(event.run_id, first.payload.workflow_def.name)

    async def _start(
        self,
        wf: WorkflowDef,
        event: ev.WorkflowStarted,
        explicit_key: Any,
        idempotent: bool = True,
        unread: bool = False,
        explicit: bool = False,
    ) -> dict[str, Any]:
        """Admit and store a start request: handed straight to its owner, stored once, in
        its history; if no owner takes it, in the run's inbox. ``unread``: an explicit run
        id whose history was not read first (nothing to admit): the owner tells whether
        the run had started, and the inbox is not sent a start the history already has.
        ``explicit``: a run id not made here, which another start may race for: one the
        owner did not answer in time is compared with the run's first recorded start."""
        data = event.payload.input if event.payload else None
        encoded = ev.encode_event(event)
        if len(encoded) > self.max_payload:
            raise PayloadTooLarge("run input with its definition", len(encoded), self.max_payload)
        run_id = event.run_id
        existing, claim = (
            await self.admission.claim_idempotency(wf, data, run_id, explicit_key, self._started)
            if idempotent
            else (None, None)
        )
        if existing:
            return {"run_id": existing, "deduplicated": True}
        try:
            replaced = await self.admission.take_singleton(wf, data, run_id, self.reader.status_of)
            now = ev.parse_timestamp(event.timestamp)
            await self.admission.register_waiters(wf, data, run_id, lambda ns: _after(now, ns))
            if not self.admission.may_send(claim):
                raise Unavailable(f"run {run_id} took too long to admit; start it again")
        except BaseException:
            await self.admission.release_idempotency(claim)
            raise
        # From here the start may land whatever this request is told (a send that timed out
        # may have been stored): the claim stays, and a start again with the key answers
        # with this run once it is found, or takes the key over once the claim is abandoned.
        answer = await self._hand_over(event, encoded)
        if answer in (NOT_STORED, LATE) and unread:
            recorded = await self._same_run(event, await self.reader.recorded_start(run_id))
            if recorded is not None:
                return recorded
        ack = None if answer in (STORED, REPEATED) else await publish_fact(self.js, event, body=encoded)
        await self.admission.confirm_idempotency(claim)
        if answer == REPEATED or (ack is not None and ack.duplicate):
            # Another start with this run id got in first, a moment ago (it may still
            # wait in the inbox: the recorded history was read before the publish).
            first = await self.reader.first_event(run_id)
            return await self._same_run(event, first) or {"run_id": run_id, "deduplicated": True}
        if answer == LATE and explicit:
            # A busy owner may be storing a racing start of this run id that was handed to
            # it: in the history, not the inbox, whose message id cannot tell of it. The
            # run's first recorded start does: this one (from the inbox), or the racer's.
            first = await self._first_recorded(run_id)
            if first is not None and (first.timestamp, first.trace_parent) != (event.timestamp, event.trace_parent):
                return await self._same_run(event, first) or {"run_id": run_id, "deduplicated": True}
        if replaced:
            await self.cancel_by(replaced, f"replaced by run {run_id} (singleton cancel)", f"singleton.{run_id}")
        return {"run_id": run_id}

    async def _first_recorded(self, run_id: str) -> ev.WorkflowStarted | None:
        """The run's first recorded start, once there is one (None after START_CONFIRM_WAIT)."""
        loop = asyncio.get_running_loop()
        until, pause = loop.time() + START_CONFIRM_WAIT, START_CONFIRM_POLL
        while True:
            first = await self.reader.recorded_start(run_id)
            if first is not None or loop.time() >= until:
                return first
            await asyncio.sleep(min(pause, max(0.0, until - loop.time())))
            pause *= 2

    async def _started(self, run_id: str) -> bool:
        return await self.reader.first_event(run_id) is not None

    async def _hand_over(self, event: ev.WorkflowStarted, body: bytes) -> bytes:
        """The owner's answer: STORED, REPEATED, NOT_STORED (no owner), or LATE (not in time)."""
        if not self.partitions:
            return NOT_STORED
        stored = self.here(event) if self.here is not None else None
        if stored is not None:
            try:
                answer = await asyncio.wait_for(stored, START_HANDOFF_TIMEOUT)
            except TimeoutError:
                return LATE  # a busy owner: the inbox takes it (a start stored twice is folded once)
            if answer in (STORED, REPEATED):
                return answer
        subject = handoff_subject(partition_of(event.run_id, self.partitions))
        # Briefly: a busy owner must not hold up start requests (the control plane serves a
        # bounded number at once); the inbox takes the start instead, and a start that lands
        # twice is the same fact, folded once.
        return await ask_owner(requester(self.js), subject, body, event.trace_parent, timeout=START_HANDOFF_TIMEOUT)


def _check_schema(schema: dict[str, Any], data: Any) -> None:
    try:
        jsonschema.validate(data, schema)
    except jsonschema.ValidationError as err:
        where = "/".join(str(p) for p in err.absolute_path)
        raise InvalidInput(f"{err.message}" + (f" (at {where})" if where else "")) from None


def _now() -> datetime:
    return datetime.now(UTC)


def _after(moment: datetime, ns: int) -> str:
    return ev.format_timestamp(moment + timedelta(microseconds=ns // 1000))
