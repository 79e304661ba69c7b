"""Folding a reactive execution's history: ``fold(execution, event) -> execution``.

Theory of operation: each event carries the state after it, so a fold step
adopts that state and updates the engine's own bookkeeping (firings per rule
for cooldowns and max firings, the last position seen per input source, the
pending callback). Duplicates and stale events return the same object:
a second ``created``; anything after the execution ended; a firing from a
source position already seen; a callback for a task that is not pending.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from .events import CallbackApplied, ExecutionCreated, ExecutionEnded, ReactiveEvent, RuleFired
from .state import ExecutionStatus, is_terminal_status


class RuleFirings(msgspec.Struct, frozen=True):
    count: int = 0
    last_at: str = ""


class PendingTask(msgspec.Struct, frozen=True):
    task_id: str
    rule_id: str
    since: str = ""


class Execution(msgspec.Struct, frozen=True):
    execution_id: str
    workflow_id: str = ""
    key: str = ""
    created: bool = False
    state: dict[str, Any] = {}
    firings: dict[str, RuleFirings] = {}
    seen: dict[str, int] = {}
    pending: PendingTask | None = None
    fired: int = 0

    @property
    def status(self) -> str:
        return str(self.state.get("status", ExecutionStatus.PENDING.value))

    @property
    def is_terminal(self) -> bool:
        return is_terminal_status(self.status)

    def already_seen(self, source: str, position: int) -> bool:
        return bool(source) and position > 0 and self.seen.get(source, 0) >= position


def fold(ex: Execution, event: ReactiveEvent) -> Execution:
    match event:
        case ExecutionCreated():
            if ex.created:
                return ex
            return msgspec.structs.replace(
                ex, created=True, workflow_id=event.workflow_id, key=event.key, state=event.state or {}
            )
        case RuleFired():
            return _fired(ex, event)
        case CallbackApplied():
            if not ex.created or ex.is_terminal or ex.pending is None or ex.pending.task_id != event.task_id:
                return ex
            return msgspec.structs.replace(ex, state=event.state or ex.state, pending=None)
        case ExecutionEnded():
            if not ex.created or ex.is_terminal:
                return ex
            return msgspec.structs.replace(ex, state=event.state or ex.state, pending=None)
    return ex


def _fired(ex: Execution, event: RuleFired) -> Execution:
    if not ex.created or ex.is_terminal or ex.already_seen(event.source, event.position):
        return ex
    if event.number and event.number != ex.fired + 1:
        return ex
    previous = ex.firings.get(event.rule_id, RuleFirings())
    firings = {**ex.firings, event.rule_id: RuleFirings(previous.count + 1, event.timestamp)}
    seen = {**ex.seen, event.source: event.position} if event.source and event.position else ex.seen
    pending = PendingTask(event.task_id, event.rule_id, event.timestamp) if event.task_id else ex.pending
    return msgspec.structs.replace(
        ex, state=event.state or ex.state, firings=firings, seen=seen, pending=pending, fired=ex.fired + 1
    )


def replay(events: Iterable[ReactiveEvent], ex: Execution | None = None, execution_id: str = "") -> Execution:
    current = ex if ex is not None else Execution(execution_id=execution_id)
    for event in events:
        current = fold(current, event)
    return current
