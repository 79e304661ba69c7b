"""Retry policies: which one applies, and the delay before retry number k."""

from __future__ import annotations

import math

from .definition import RetryPolicy, StepDef, WorkflowDef
from .durations import HOUR, MILLISECOND, SECOND

LEGACY_DELAY = 5 * SECOND
MIN_DELAY = MILLISECOND
MAX_DELAY = HOUR


def resolve_retry_policy(wf: WorkflowDef, step: StepDef) -> RetryPolicy | None:
    """Step ``retry``, else workflow ``default_retry``, else legacy ``retries``."""
    if step.retry is not None:
        return step.retry
    if wf.default_retry is not None:
        return wf.default_retry
    if step.retries > 0:
        return RetryPolicy(
            max_attempts=step.retries, strategy="fixed", initial_delay=LEGACY_DELAY, max_delay=LEGACY_DELAY
        )
    return None


def calculate_delay(policy: RetryPolicy, retry_number: int) -> int:
    """Nanoseconds to wait before retry ``retry_number`` (1 = the first retry)."""
    k = max(1, retry_number)
    base = int(policy.initial_delay)
    if policy.strategy == "linear":
        delay = base * k
    elif policy.strategy == "exponential":
        multiplier = policy.multiplier if policy.multiplier > 0 else 2.0
        try:
            growth = multiplier ** (k - 1)
        except OverflowError:  # a late retry of a long policy: far beyond the 1h clamp anyway
            growth = math.inf
        delay = int(min(base * growth, MAX_DELAY + 1)) if base else 0
    else:
        delay = base
    max_delay = int(policy.max_delay)  # a duration: nanoseconds once parsed
    if max_delay and delay > max_delay:
        delay = max_delay
    return min(max(delay, MIN_DELAY), MAX_DELAY)


def may_retry(policy: RetryPolicy | None, failed_attempt: int) -> bool:
    """A step runs at most ``max_attempts + 1`` times."""
    return policy is not None and failed_attempt <= policy.max_attempts
