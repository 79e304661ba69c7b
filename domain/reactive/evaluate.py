"""Rule evaluation: in definition order, the first rule whose limits and conditions pass fires.

Limits are checked before conditions (a rule in its cooldown, or at its max
firings, is not evaluated at all). ``now`` and the firing counts are
arguments: the same inputs give the same answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..events import parse_timestamp
from .fold import RuleFirings
from .rules import Rule, RuleContext


@dataclass(frozen=True)
class RuleEvaluation:
    rule_id: str
    fired: bool
    reason: str
    conditions: tuple[tuple[str, bool], ...] = field(default=())


def evaluate_rule(rule: Rule, ctx: RuleContext, firings: RuleFirings, now: str) -> RuleEvaluation:
    if rule.max_firings and firings.count >= rule.max_firings:
        return RuleEvaluation(rule.id, False, f"max firings ({rule.max_firings}) reached")
    if rule.cooldown_ns and firings.last_at and _elapsed_ns(firings.last_at, now) < rule.cooldown_ns:
        return RuleEvaluation(rule.id, False, "in cooldown")
    results = tuple((c.description, bool(c.evaluate(ctx))) for c in rule.conditions)
    passed = [ok for _, ok in results]
    fired = any(passed) if rule.logic == "or" else all(passed)
    return RuleEvaluation(rule.id, fired, "conditions met" if fired else "conditions not met", results)


def first_match(
    rules: Iterable[Rule], ctx: RuleContext, firings: Mapping[str, RuleFirings], now: str
) -> tuple[Rule | None, list[RuleEvaluation]]:
    """The first rule that fires (or None), and every evaluation made on the way."""
    made = []
    for rule in rules:
        result = evaluate_rule(rule, ctx, firings.get(rule.id, RuleFirings()), now)
        made.append(result)
        if result.fired:
            return rule, made
    return None, made


def _elapsed_ns(since: str, now: str) -> int:
    delta = parse_timestamp(now) - parse_timestamp(since)
    return int(delta.total_seconds() * 1e9)
