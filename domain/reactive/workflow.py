"""ReactiveWorkflow: ordered rules over one typed execution state, and its lifecycle events."""

from __future__ import annotations

from typing import Any

import msgspec

from .rules import Rule, duration_ns
from .state import ExecutionState


class ReactiveWorkflow:
    """A reactive workflow definition: rules are evaluated in the order they were added."""

    def __init__(
        self,
        id: str,
        *,
        description: str = "",
        state_type: type[ExecutionState] | None = None,
        state_bucket: str = "",
        max_iterations: int = 0,
        timeout: object = None,
        on_complete: str = "",
        on_fail: str = "",
        on_escalate: str = "",
    ) -> None:
        self.id, self.description = id, description
        self.state_type, self.state_bucket = state_type, state_bucket
        self.max_iterations = max_iterations
        self.timeout = timeout
        self.on_complete, self.on_fail, self.on_escalate = on_complete, on_fail, on_escalate
        self.rules: list[Rule] = []

    def add_rule(self, rule: Rule) -> ReactiveWorkflow:
        self.rules.append(rule)
        return self

    @property
    def timeout_ns(self) -> int:
        return duration_ns(self.timeout) if self.timeout else 0

    def new_state(self) -> ExecutionState:
        assert self.state_type is not None
        return self.state_type()

    def describe(self) -> dict[str, Any]:
        """What ``dagnats reactive list`` shows: plain data, no callables."""
        return {
            "id": self.id,
            "description": self.description,
            "state_type": self.state_type.__name__ if self.state_type else "",
            "state_bucket": self.state_bucket,
            "max_iterations": self.max_iterations,
            "timeout_ns": self.timeout_ns,
            "on_complete": self.on_complete,
            "on_fail": self.on_fail,
            "on_escalate": self.on_escalate,
            "rules": [
                {
                    "id": r.id,
                    "trigger": r.trigger.describe(),
                    "conditions": [c.description for c in r.conditions],
                    "logic": r.logic,
                    "action": str(r.action.type) if r.action else "",
                    "subject": r.action.subject if r.action else "",
                    "cooldown_ns": r.cooldown_ns,
                    "max_firings": r.max_firings,
                }
                for r in self.rules
            ],
        }


class WorkflowCompletionEvent(msgspec.Struct, frozen=True):
    execution_id: str
    workflow_id: str
    status: str
    final_phase: str
    completed_at: str


class WorkflowFailureEvent(msgspec.Struct, frozen=True):
    execution_id: str
    workflow_id: str
    phase: str
    error: str
    failed_at: str


class WorkflowEscalationEvent(msgspec.Struct, frozen=True):
    execution_id: str
    workflow_id: str
    phase: str
    reason: str
    escalated_at: str


class CallbackFields(msgspec.Struct, frozen=True):
    """Injected into a publish_async payload: where and how to answer."""

    task_id: str
    callback_subject: str
    execution_id: str
