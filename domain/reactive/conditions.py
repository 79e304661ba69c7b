"""Condition helpers (the seed's ``ConditionHelpers``), combinable with and_/or_/not_."""

from __future__ import annotations

from .rules import ConditionFunc, RuleContext
from .state import ExecutionStatus


def _field(ctx: RuleContext, name: str, default: object = None) -> object:
    return getattr(ctx.state, name, default) if ctx.state is not None else default


def always() -> ConditionFunc:
    return lambda ctx: True


def never() -> ConditionFunc:
    return lambda ctx: False


def has_message() -> ConditionFunc:
    return lambda ctx: ctx.message is not None


def has_state() -> ConditionFunc:
    return lambda ctx: ctx.state is not None


def phase_is(phase: str) -> ConditionFunc:
    return lambda ctx: _field(ctx, "phase") == phase


def phase_in(*phases: str) -> ConditionFunc:
    wanted = frozenset(phases)
    return lambda ctx: _field(ctx, "phase") in wanted


def status_is(status: ExecutionStatus | str) -> ConditionFunc:
    return lambda ctx: str(_field(ctx, "status", "")) == str(status)


def iteration_less_than(n: int) -> ConditionFunc:
    return lambda ctx: int(_field(ctx, "iteration", 0) or 0) < n  # type: ignore[call-overload]


def iteration_equals(n: int) -> ConditionFunc:
    return lambda ctx: _field(ctx, "iteration", 0) == n


def has_error() -> ConditionFunc:
    return lambda ctx: bool(_field(ctx, "error", ""))


def no_error() -> ConditionFunc:
    return lambda ctx: not _field(ctx, "error", "")


def is_waiting() -> ConditionFunc:
    return lambda ctx: str(_field(ctx, "status", "")) == ExecutionStatus.WAITING.value


def not_waiting() -> ConditionFunc:
    return lambda ctx: str(_field(ctx, "status", "")) != ExecutionStatus.WAITING.value


def and_(*conditions: ConditionFunc) -> ConditionFunc:
    return lambda ctx: all(c(ctx) for c in conditions)


def or_(*conditions: ConditionFunc) -> ConditionFunc:
    return lambda ctx: any(c(ctx) for c in conditions)


def not_(condition: ConditionFunc) -> ConditionFunc:
    return lambda ctx: not condition(ctx)
