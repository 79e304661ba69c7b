"""Reactive workflows (the semstreams ``reactive`` seed, in Python): ordered, typed
rules that fire when KV state changes or a message arrives, each execution a run
whose state is folded from its own history. See docs/reactive.md."""

from .conditions import (
    always,
    and_,
    has_error,
    has_message,
    has_state,
    is_waiting,
    iteration_equals,
    iteration_less_than,
    never,
    no_error,
    not_,
    not_waiting,
    or_,
    phase_in,
    phase_is,
    status_is,
)
from .errors import ReactiveWorkflowExists, ReactiveWorkflowInvalid, ResultTypeExists
from .patterns import matches_pattern
from .registry import ReactiveRegistry
from .rules import Action, ActionType, Condition, Rule, RuleContext, TriggerSource
from .state import ExecutionState, ExecutionStatus, TimelineEntry, TriggerMode
from .workflow import (
    CallbackFields,
    ReactiveWorkflow,
    WorkflowCompletionEvent,
    WorkflowEscalationEvent,
    WorkflowFailureEvent,
)

__all__ = [
    "Action",
    "ActionType",
    "CallbackFields",
    "Condition",
    "ExecutionState",
    "ExecutionStatus",
    "ReactiveRegistry",
    "ReactiveWorkflow",
    "ReactiveWorkflowExists",
    "ReactiveWorkflowInvalid",
    "ResultTypeExists",
    "Rule",
    "RuleContext",
    "TimelineEntry",
    "TriggerMode",
    "TriggerSource",
    "WorkflowCompletionEvent",
    "WorkflowEscalationEvent",
    "WorkflowFailureEvent",
    "always",
    "and_",
    "has_error",
    "has_message",
    "has_state",
    "is_waiting",
    "iteration_equals",
    "iteration_less_than",
    "matches_pattern",
    "never",
    "no_error",
    "not_",
    "not_waiting",
    "or_",
    "phase_in",
    "phase_is",
    "status_is",
]
