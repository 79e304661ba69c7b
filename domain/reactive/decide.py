"""Deciding what one input does to an execution: the events of one history record.

Theory of operation: an input is a trigger (KV change or message, with the
rules it may fire), a callback (the result of a publish_async), or the
execution's timeout. ``decide`` folds nothing and calls no I/O: it takes the
execution as folded so far, runs the workflow author's conditions, builders
and mutators on a fresh typed copy of the state, and returns the events to
append (each with the state after it and the messages to publish). Then, as
long as the state changed and no input is awaited, rules watching the
workflow's own state bucket are evaluated again (a cascade, bounded by
``MAX_CASCADE``): the engine's writes of its state never come back as KV
triggers, so this is the only way a state change leads to the next rule,
and it cannot loop through NATS.

A trigger that fires no rule records nothing (an execution is created only
when its first rule fires). A waiting execution evaluates no rules until its
callback arrives. ``max_iterations`` escalates, the deadline times out, an
exception in the author's code fails the execution.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import msgspec

from ..events import format_timestamp, parse_timestamp
from .evaluate import first_match
from .events import CallbackApplied, ExecutionCreated, ExecutionEnded, Outgoing, ReactiveEvent, RuleFired
from .fold import Execution, RuleFirings
from .patterns import matches_pattern
from .rules import ActionType, Rule, RuleContext
from .state import (
    ExecutionState,
    ExecutionStatus,
    TimelineEntry,
    TriggerMode,
    state_from_builtins,
    state_to_builtins,
)
from .workflow import (
    CallbackFields,
    ReactiveWorkflow,
    WorkflowCompletionEvent,
    WorkflowEscalationEvent,
    WorkflowFailureEvent,
)

MAX_CASCADE = 32


@dataclass
class Input:
    """One thing that happened to an execution; ``id`` is unique within the execution."""

    id: str
    kind: str  # "trigger" | "callback" | "timeout"
    key: str = ""
    mode: TriggerMode = TriggerMode.STATE
    info: str = ""
    source: str = ""
    position: int = 0
    rules: list[Rule] = field(default_factory=list)
    message: Any = None
    subject: str = ""
    kv_key: str = ""
    kv_revision: int = 0
    task_id: str = ""
    result: Any = None


class _UserCodeError(Exception):
    pass


def callback_subject(execution_id: str) -> str:
    return f"reactive.inbox.{execution_id}"


# Told of each rule evaluated: (rule id, whether it fired). For metrics; decide stays pure without it.
EvaluationObserver = Callable[[str, bool], None]


def decide(
    wf: ReactiveWorkflow,
    ex: Execution,
    inp: Input,
    now: str,
    callback_subject_of: Callable[[str], str] = callback_subject,
    observe: EvaluationObserver | None = None,
) -> list[ReactiveEvent]:
    if ex.is_terminal:
        return []
    return _Decision(wf, ex, inp, now, callback_subject_of, observe).run()


class _Decision:
    def __init__(
        self,
        wf: ReactiveWorkflow,
        ex: Execution,
        inp: Input,
        now: str,
        callback_subject_of: Callable[[str], str],
        observe: EvaluationObserver | None = None,
    ) -> None:
        self.wf, self.ex, self.inp, self.now = wf, ex, inp, now
        self.callback_subject_of, self.observe = callback_subject_of, observe
        self.events: list[ReactiveEvent] = []
        self.firings = dict(ex.firings)
        self.state_data: dict[str, Any] = dict(ex.state)
        self.changed = False

    # ---- the input ----------------------------------------------------------------

    def run(self) -> list[ReactiveEvent]:
        if not self.ex.created:
            if self.inp.kind != "trigger":
                return []
            self.state_data = self._fresh_state()
        elif self._expired():
            return self._end(ExecutionStatus.TIMED_OUT, "deadline passed")
        if self.inp.kind == "timeout":
            # The durable timer fired: trusted like a DAG run's timer.fired (the deadline never moves).
            return self._end(ExecutionStatus.TIMED_OUT, "timeout") if self.state_data.get("deadline") else []
        try:
            if self.inp.kind == "callback":
                if not self._callback():
                    return []
            elif not self._trigger():
                return []
            self._cascade()
        except _UserCodeError as err:
            self._end(ExecutionStatus.FAILED, str(err))
        return self._with_ids()

    def _trigger(self) -> bool:
        if self.ex.already_seen(self.inp.source, self.inp.position) or self._waiting():
            return False
        ctx = self._context(message=self.inp.message)
        rule = self._match(self.inp.rules, ctx)
        if rule is None:
            return False
        if not self.ex.created:
            deadline = self.state_data.get("deadline", "")
            created = ExecutionCreated(
                self.ex.execution_id, state=dict(self.state_data), workflow_id=self.wf.id, key=self.inp.key,
                deadline=deadline,
            )  # fmt: skip
            self.events.append(created)
        self._fire(rule, ctx, self.inp.mode, self.inp.info, self.inp.source, self.inp.position)
        return True

    def _callback(self) -> bool:
        pending = self.ex.pending
        if pending is None or pending.task_id != self.inp.task_id:
            return False  # late or duplicate: changes nothing
        rule = next((r for r in self.wf.rules if r.id == pending.rule_id), None)
        ctx = self._context(message=self.inp.result)
        state = ctx.state
        assert isinstance(state, ExecutionState)
        if rule is not None and rule.action is not None and rule.action.mutate is not None:
            self._user(rule.action.mutate, ctx, self.inp.result)
        state.status, state.pending_task_id, state.pending_rule_id = ExecutionStatus.RUNNING, "", ""
        self._record_timeline(state, pending.rule_id, TriggerMode.CALLBACK, self.inp.info, "callback")
        latency = int((parse_timestamp(self.now) - parse_timestamp(pending.since)).total_seconds() * 1000)
        self._adopt(state)
        self.events.append(
            CallbackApplied(
                self.ex.execution_id, state=dict(self.state_data), task_id=pending.task_id, rule_id=pending.rule_id,
                latency_ms=max(latency, 0),
            )
        )  # fmt: skip
        self._check_iterations()
        return True

    def _cascade(self) -> None:
        watching = [r for r in self.wf.rules if self._watches_own_state(r)]
        for _ in range(MAX_CASCADE):
            if self._ended() or self._waiting() or not watching:
                return
            ctx = self._context(message=None)
            rule = self._match(watching, ctx)
            if rule is None:
                return
            self._fire(rule, ctx, TriggerMode.CASCADE, f"state {self.wf.state_bucket} {self._key()}", "", 0)
        if not self._ended() and not self._waiting():
            self._end(ExecutionStatus.FAILED, f"rules fired {MAX_CASCADE} times on one input without settling")

    # ---- firing -------------------------------------------------------------------

    def _fire(self, rule: Rule, ctx: RuleContext, mode: TriggerMode, info: str, source: str, position: int) -> None:
        action = rule.action
        assert action is not None
        state = ctx.state
        assert isinstance(state, ExecutionState)
        outgoing: list[Outgoing] = []
        task_id = ""
        if action.type == ActionType.PUBLISH_ASYNC:
            count = self.firings.get(rule.id, RuleFirings()).count + 1
            task_id = f"{self.ex.execution_id}-{rule.id}-{count}"
            payload = _with_callback(
                _builtins(self._user(action.build, ctx)),
                CallbackFields(task_id, self.callback_subject_of(self.ex.execution_id), self.ex.execution_id),
            )
            outgoing.append(Outgoing(action.subject, payload))
            state.status, state.pending_task_id, state.pending_rule_id = ExecutionStatus.WAITING, task_id, rule.id
        else:
            if action.subject:
                outgoing.append(Outgoing(action.subject, _builtins(self._user(action.build, ctx))))
            if action.mutate is not None:
                self._user(action.mutate, ctx, None)
        completing = action.type == ActionType.COMPLETE
        if state.status == ExecutionStatus.PENDING:
            state.status = ExecutionStatus.RUNNING
        self._record_timeline(state, rule.id, mode, info, str(action.type))
        self._adopt(state)
        self.firings[rule.id] = RuleFirings(self.firings.get(rule.id, RuleFirings()).count + 1, self.now)
        fired = RuleFired(
            self.ex.execution_id, state=dict(self.state_data), outgoing=tuple(outgoing), rule_id=rule.id,
            trigger_mode=str(mode), trigger_info=info, source=source, position=position, action=str(action.type),
            task_id=task_id, number=self.ex.fired + sum(isinstance(e, RuleFired) for e in self.events) + 1,
        )  # fmt: skip
        self.events.append(fired)
        if completing:
            self._end(ExecutionStatus.COMPLETED, f"rule {rule.id}")
        else:
            self._check_iterations()

    def _check_iterations(self) -> None:
        limit = self.wf.max_iterations
        if limit and not self._ended() and int(self.state_data.get("iteration", 0)) >= limit:
            self._end(ExecutionStatus.ESCALATED, f"max iterations ({limit}) reached")

    def _end(self, status: ExecutionStatus, reason: str) -> list[ReactiveEvent]:
        data = dict(self.state_data)
        data.update(status=status.value, updated_at=self.now, completed_at=self.now, pending_task_id="")
        data["pending_rule_id"] = ""
        if status != ExecutionStatus.COMPLETED:
            data["error"] = data.get("error") or reason
        self.state_data = data
        outgoing = self._lifecycle(status, reason, data)
        self.events.append(
            ExecutionEnded(self.ex.execution_id, state=data, outgoing=outgoing, status=status.value, reason=reason)
        )
        return self._with_ids()

    def _lifecycle(self, status: ExecutionStatus, reason: str, data: dict[str, Any]) -> tuple[Outgoing, ...]:
        ids = (self.ex.execution_id, self.wf.id)
        phase = str(data.get("phase", ""))
        payload: msgspec.Struct
        if status == ExecutionStatus.COMPLETED:
            subject = self.wf.on_complete
            payload = WorkflowCompletionEvent(*ids, status.value, phase, self.now)
        elif status == ExecutionStatus.ESCALATED:
            subject = self.wf.on_escalate
            payload = WorkflowEscalationEvent(*ids, phase, reason, self.now)
        else:
            subject = self.wf.on_fail
            payload = WorkflowFailureEvent(*ids, phase, str(data.get("error") or reason), self.now)
        return (Outgoing(subject, msgspec.to_builtins(payload)),) if subject else ()

    # ---- helpers ------------------------------------------------------------------

    def _match(self, rules: list[Rule], ctx: RuleContext) -> Rule | None:
        try:
            rule, made = first_match(rules, ctx, self.firings, self.now)
        except Exception as err:  # noqa: BLE001 - the author's condition raised: the execution fails
            raise _UserCodeError(f"condition raised {type(err).__name__}: {err}") from err
        if self.observe is not None:
            for evaluation in made:
                self.observe(evaluation.rule_id, evaluation.fired)
        return rule

    def _user(self, fn: Callable[..., Any] | None, *args: Any) -> Any:
        if fn is None:
            return None
        try:
            return fn(*args)
        except Exception as err:  # noqa: BLE001 - the author's code raised: the execution fails
            name = getattr(fn, "__name__", "function")
            raise _UserCodeError(f"{name} raised {type(err).__name__}: {err}") from err

    def _context(self, message: Any) -> RuleContext:
        assert self.wf.state_type is not None
        state = state_from_builtins(self.state_data, self.wf.state_type)
        return RuleContext(
            state=state, message=message, subject=self.inp.subject, kv_key=self.inp.kv_key,
            kv_revision=self.inp.kv_revision, key=self._key(), now=self.now,
        )  # fmt: skip

    def _adopt(self, state: ExecutionState) -> None:
        state.updated_at = self.now
        new = state_to_builtins(state)
        self.changed = self.changed or new != self.state_data
        self.state_data = new

    def _record_timeline(self, state: ExecutionState, rule_id: str, mode: TriggerMode, info: str, action: str) -> None:
        entry = TimelineEntry(
            timestamp=self.now, rule_id=rule_id, trigger_mode=str(mode), trigger_info=info, action=action,
            phase_after=state.phase, iteration=state.iteration,
        )  # fmt: skip
        state.timeline.append(entry)

    def _fresh_state(self) -> dict[str, Any]:
        state = self.wf.new_state()
        state.id, state.workflow_id = self.ex.execution_id, self.wf.id
        state.status, state.created_at, state.updated_at = ExecutionStatus.RUNNING, self.now, self.now
        if self.wf.timeout_ns:
            deadline = parse_timestamp(self.now) + timedelta(microseconds=self.wf.timeout_ns // 1000)
            state.deadline = format_timestamp(deadline)
        return state_to_builtins(state)

    def _expired(self) -> bool:
        deadline = str(self.state_data.get("deadline") or "")
        return bool(deadline) and parse_timestamp(self.now) >= parse_timestamp(deadline)

    def _waiting(self) -> bool:
        return self.state_data.get("status") == ExecutionStatus.WAITING.value

    def _ended(self) -> bool:
        return any(isinstance(e, ExecutionEnded) for e in self.events)

    def _key(self) -> str:
        return self.ex.key or self.inp.key

    def _watches_own_state(self, rule: Rule) -> bool:
        t = rule.trigger
        return (
            not t.subject and t.watch_bucket == self.wf.state_bucket and matches_pattern(self._key(), t.watch_pattern)
        )

    def _with_ids(self) -> list[ReactiveEvent]:
        """Each event's id (input id + index) and each message's Nats-Msg-Id derive from the input."""
        out: list[ReactiveEvent] = []
        for index, event in enumerate(self.events):
            event_id = f"{self.inp.id}/{index}"
            msgs = tuple(
                Outgoing(o.subject, o.data, f"{self.ex.execution_id}/{event_id}/{n}")
                for n, o in enumerate(event.outgoing)
            )
            out.append(msgspec.structs.replace(event, id=event_id, timestamp=self.now, outgoing=msgs))
        return out


def _builtins(payload: Any) -> Any:
    return msgspec.to_builtins(payload)


def _with_callback(payload: Any, fields: CallbackFields) -> Any:
    extra = msgspec.to_builtins(fields)
    if isinstance(payload, dict):
        return {**payload, **extra}
    return {"payload": payload, **extra}


def execution_id(workflow_id: str, key: str) -> str:
    """The run id of the execution of ``workflow_id`` for ``key``: readable, a safe identifier, unique."""
    digest = hashlib.sha256(f"{workflow_id}\0{key}".encode()).hexdigest()[:8]
    readable = re.sub(r"[^A-Za-z0-9_-]", "_", f"{workflow_id}-{key}")[:55]
    return f"{readable}-{digest}"
