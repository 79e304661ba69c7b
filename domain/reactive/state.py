"""The state of a reactive execution: what every workflow's own state type embeds.

A reactive workflow declares its state as a msgspec Struct that subclasses
``ExecutionState`` (Python's spelling of the seed's embedding). The engine owns
the embedded fields (id, workflow id, status, pending task, deadline,
timeline); rules own ``phase``, ``iteration`` and ``error`` as well as the
workflow's own fields. Timestamps are RFC3339 strings, as in run histories.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

import msgspec


class ExecutionStatus(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    # Parked until the callback of a publish_async arrives.
    WAITING = "waiting"
    COMPLETED = "completed"
    FAILED = "failed"
    ESCALATED = "escalated"
    TIMED_OUT = "timed_out"

    def __str__(self) -> str:
        return self.value


TERMINAL_STATUSES = frozenset(
    {ExecutionStatus.COMPLETED, ExecutionStatus.FAILED, ExecutionStatus.ESCALATED, ExecutionStatus.TIMED_OUT}
)


def is_terminal_status(status: object) -> bool:
    return str(status) in {s.value for s in TERMINAL_STATUSES}


class TriggerMode(str, Enum):
    STATE = "kv"
    MESSAGE = "message"
    MESSAGE_AND_STATE = "message+state"
    # The engine's own: a callback, a re-evaluation after a state change, a timer.
    CALLBACK = "callback"
    CASCADE = "cascade"
    TIMER = "timer"

    def __str__(self) -> str:
        return self.value


class TimelineEntry(msgspec.Struct, kw_only=True):
    """One rule firing (or callback, or ending), as the seed records it."""

    timestamp: str = ""
    rule_id: str = ""
    trigger_mode: str = ""
    trigger_info: str = ""
    action: str = ""
    phase_after: str = ""
    iteration: int = 0


class ExecutionState(msgspec.Struct, kw_only=True):
    """Embed (subclass) this in a workflow's state type; defaults make a fresh execution."""

    id: str = ""
    workflow_id: str = ""
    phase: str = ""
    iteration: int = 0
    status: ExecutionStatus = ExecutionStatus.PENDING
    error: str = ""
    pending_task_id: str = ""
    pending_rule_id: str = ""
    created_at: str = ""
    updated_at: str = ""
    completed_at: str = ""
    deadline: str = ""
    timeline: list[TimelineEntry] = msgspec.field(default_factory=list)

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def is_waiting(self) -> bool:
        return self.status == ExecutionStatus.WAITING


def state_to_builtins(state: ExecutionState) -> dict[str, Any]:
    data = msgspec.to_builtins(state)
    assert isinstance(data, dict)
    return data


def state_from_builtins(data: dict[str, Any], state_type: type[ExecutionState]) -> ExecutionState:
    """The typed state; a fresh copy each call (mutators change it in place)."""
    return msgspec.convert(data, state_type, strict=False)
