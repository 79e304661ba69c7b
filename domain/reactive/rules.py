"""Rules: a trigger, conditions, one action, and limits on firing; built fluently.

    Rule("approve").watch_kv("plan_reviews", "review.*") \\
        .when("approved", phase_is("approved")).complete()

A rule is evaluated against a ``RuleContext`` (the execution's typed state, and
the triggering message or KV value). The callables a rule holds are the
workflow author's code: conditions read the context, payload builders return
what to publish, mutators change ``ctx.state`` in place. The engine records
what they produced (the state after, the messages), so replaying a history
never calls them again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from ..durations import parse_duration
from .state import ExecutionState, TriggerMode


@dataclass
class RuleContext:
    """What conditions, builders and mutators see; which fields are set depends on the trigger."""

    state: Any = None
    message: Any = None
    subject: str = ""
    kv_key: str = ""
    kv_revision: int = 0
    # The execution's key (KV key, or what ``with_state_lookup`` derived from the message).
    key: str = ""
    now: str = ""


ConditionFunc = Callable[[RuleContext], bool]
PayloadBuilder = Callable[[RuleContext], Any]
# Mutates ``ctx.state`` in place; ``result`` is the typed callback result (None for sync actions).
StateMutator = Callable[[RuleContext, Any], Any]


@dataclass(frozen=True)
class Condition:
    description: str
    evaluate: ConditionFunc


class ActionType(str, Enum):
    PUBLISH_ASYNC = "publish_async"
    PUBLISH = "publish"
    MUTATE = "mutate"
    COMPLETE = "complete"

    def __str__(self) -> str:
        return self.value


@dataclass
class Action:
    type: ActionType
    subject: str = ""
    build: PayloadBuilder | None = None
    result_type: Any = None  # a registered name, or a type
    mutate: StateMutator | None = None


@dataclass
class TriggerSource:
    """KV watch, subject (core or JetStream), or a subject with a state lookup."""

    watch_bucket: str = ""
    watch_pattern: str = ""
    subject: str = ""
    stream: str = ""
    message_type: Any = None
    state_bucket: str = ""
    state_key: Callable[[Any], str] | None = None
    value_type: Any = None

    @property
    def mode(self) -> TriggerMode | None:
        if self.subject:
            return TriggerMode.MESSAGE_AND_STATE if self.state_key is not None else TriggerMode.MESSAGE
        if self.watch_bucket:
            return TriggerMode.STATE
        return None

    def describe(self) -> str:
        if self.subject:
            where = f"jetstream {self.stream} {self.subject}" if self.stream else f"subject {self.subject}"
            return where + (f" + state {self.state_bucket}" if self.state_key is not None else "")
        if self.watch_bucket:
            return f"kv {self.watch_bucket} {self.watch_pattern}"
        return "none"


@dataclass
class Rule:
    """A reactive rule; every builder method returns the rule itself."""

    id: str
    trigger: TriggerSource = field(default_factory=TriggerSource)
    conditions: list[Condition] = field(default_factory=list)
    logic: str = "and"
    action: Action | None = None
    cooldown_ns: int = 0
    max_firings: int = 0
    # Builder mistakes found while building (reported by the registry with the rest).
    problems: list[str] = field(default_factory=list)

    # ---- triggers -------------------------------------------------------------------

    def watch_kv(self, bucket: str, pattern: str = ">", value_type: Any = None) -> Rule:
        self.trigger.watch_bucket, self.trigger.watch_pattern, self.trigger.value_type = bucket, pattern, value_type
        return self

    def on_subject(self, subject: str, message_type: Any = None) -> Rule:
        self.trigger.subject, self.trigger.message_type, self.trigger.stream = subject, message_type, ""
        return self

    def on_jetstream_subject(self, stream: str, subject: str, message_type: Any = None) -> Rule:
        self.trigger.subject, self.trigger.message_type, self.trigger.stream = subject, message_type, stream
        if not stream:
            self.problems.append("on_jetstream_subject needs a stream name")
        return self

    def with_state_lookup(self, bucket: str, key_fn: Callable[[Any], str]) -> Rule:
        self.trigger.state_bucket, self.trigger.state_key = bucket, key_fn
        return self

    # ---- conditions -----------------------------------------------------------------

    def when(self, description: str, fn: ConditionFunc) -> Rule:
        self.conditions.append(Condition(description, fn))
        return self

    def when_all(self) -> Rule:
        self.logic = "and"
        return self

    def when_any(self) -> Rule:
        self.logic = "or"
        return self

    # ---- actions (one per rule: the last one set wins, as in the seed) -------------

    def publish(self, subject: str, build: PayloadBuilder) -> Rule:
        return self._act(Action(ActionType.PUBLISH, subject=subject, build=build))

    def publish_with_mutation(self, subject: str, build: PayloadBuilder, mutator: StateMutator) -> Rule:
        return self._act(Action(ActionType.PUBLISH, subject=subject, build=build, mutate=mutator))

    def publish_async(
        self, subject: str, build: PayloadBuilder, result_type: Any, mutator: StateMutator | None = None
    ) -> Rule:
        return self._act(
            Action(ActionType.PUBLISH_ASYNC, subject=subject, build=build, result_type=result_type, mutate=mutator)
        )

    def mutate(self, fn: StateMutator) -> Rule:
        return self._act(Action(ActionType.MUTATE, mutate=fn))

    def complete(self) -> Rule:
        return self._act(Action(ActionType.COMPLETE))

    def complete_with_event(self, subject: str, build: PayloadBuilder) -> Rule:
        return self._act(Action(ActionType.COMPLETE, subject=subject, build=build))

    def complete_with_mutation(self, fn: StateMutator) -> Rule:
        return self._act(Action(ActionType.COMPLETE, mutate=fn))

    def _act(self, action: Action) -> Rule:
        self.action = action
        return self

    # ---- limits ---------------------------------------------------------------------

    def with_cooldown(self, duration: object) -> Rule:
        """``duration``: seconds (int/float, or a timedelta) or a Go-style string ("500ms")."""
        try:
            self.cooldown_ns = _to_ns(duration)
        except ValueError as err:
            self.problems.append(f"cooldown: {err}")
        return self

    def with_max_firings(self, n: int) -> Rule:
        if not isinstance(n, int) or n < 0:
            self.problems.append(f"max firings must be a whole number >= 0, not {n!r}")
        else:
            self.max_firings = n
        return self


def _to_ns(duration: object) -> int:
    seconds = getattr(duration, "total_seconds", None)
    if callable(seconds):
        return int(seconds() * 1e9)
    if isinstance(duration, (int, float)) and not isinstance(duration, bool):
        if duration < 0:
            raise ValueError(f"negative duration {duration!r}")
        return int(duration * 1e9)
    return parse_duration(duration)


def duration_ns(duration: object) -> int:
    """A duration given as seconds, a timedelta or a Go-style string, in nanoseconds."""
    return _to_ns(duration)


def is_state_type(value: object) -> bool:
    return isinstance(value, type) and issubclass(value, ExecutionState)
