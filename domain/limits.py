"""Flow control, pure: which limits a step or run is under, and the rules of each kind.

Two kinds of limit, each kept in one KV entry per key (the shell does the
compare-and-set; these functions compute the new value):

- a **rate window** (``rate_limit``, ``keyed_rate_limit``): the start times of
  the last admissions; at most ``limit`` units in any ``period`` (a sliding
  window: never more than ``limit`` in any period, never dispatched early).
  A denied request learns when enough units leave the window.
- a **slot pool** (``max_task_concurrency``, a step-level ``singleton``,
  ``concurrency.max_runs``): holders, at most ``size``, and a queue of
  waiters ordered by rank (a run's priority, else arrival). A release grants
  the queue's head; a newcomer never overtakes a waiter.

Every function returns a new value and leaves its argument alone; an
acquire by a holder that already holds (a retried request) is granted again
without counting twice.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import msgspec

from .conditions import value_text
from .definition import StepDef, WorkflowDef
from .durations import MILLISECOND
from .paths import PathNotFound, extract_dot_path

RATE, SLOTS = "rate", "slots"


class LimitRequest(msgspec.Struct, frozen=True, omit_defaults=True):
    """One limit an admission must pass: a key and its rule's numbers."""

    kind: str  # rate | slots
    key: str
    size: int  # rate: units per period; slots: holders at most
    period_ms: int = 0
    units: int = 1
    rank: float = 0.0  # slots: the waiter's place in the queue (lower first)
    reason: str = ""  # what a person reads: "rate_limit of task charge", ...


class LimitProblem(ValueError):
    """A step's input does not give a keyed limit its key."""


# ---- which limits apply ------------------------------------------------------------------


def step_limits(defn: WorkflowDef, step: StepDef, data: Any, since_ms: int) -> list[LimitRequest]:
    """The limits a step's task passes before it is dispatched (raises LimitProblem)."""
    requests = []
    if step.rate_limit is not None:
        rate = step.rate_limit
        requests.append(
            LimitRequest(
                RATE,
                f"rate.{step.task}",
                rate.limit,
                _ms(rate.period),
                reason=f"rate_limit of task {step.task} ({rate.limit} per {_ms(rate.period)} ms)",
            )
        )
    if step.keyed_rate_limit is not None:
        keyed = step.keyed_rate_limit
        try:
            value = extract_dot_path(data, keyed.key)
        except PathNotFound:
            raise LimitProblem(f"keyed_rate_limit: the step's input has no {keyed.key!r}") from None
        requests.append(
            LimitRequest(
                RATE,
                f"rate.{step.task}.{digest(value_text(value))}",
                keyed.limit,
                _ms(keyed.period),
                keyed.units,
                reason=f"keyed_rate_limit of task {step.task} for {keyed.key}={value_text(value)}",
            )
        )
    if step.max_task_concurrency:
        requests.append(
            LimitRequest(
                SLOTS,
                f"task.{step.task}",
                step.max_task_concurrency,
                rank=since_ms,
                reason=f"max_task_concurrency {step.max_task_concurrency} of task {step.task}",
            )
        )
    if step.singleton:
        requests.append(
            LimitRequest(
                SLOTS,
                f"single.{defn.name}.{step.id}",
                1,
                rank=since_ms,
                reason=f"singleton step {step.id} of workflow {defn.name}",
            )
        )
    return requests


def run_limits(defn: WorkflowDef, data: Any, created_ms: int) -> list[LimitRequest]:
    """The limits a run passes before it starts."""
    if defn.concurrency is None or not defn.concurrency.max_runs:
        return []
    rank = created_ms - priority_offset(defn, data) * 1000
    max_runs = defn.concurrency.max_runs
    return [
        LimitRequest(
            SLOTS,
            f"runs.{defn.name}",
            max_runs,
            rank=rank,
            reason=f"concurrency.max_runs {max_runs} of workflow {defn.name}",
        )
    ]


def priority_offset(defn: WorkflowDef, data: Any) -> int:
    """Seconds a run moves ahead in its workflow's queue (``priority``: by a value of its input)."""
    priority = defn.priority
    if priority is None:
        return 0
    try:
        value = value_text(extract_dot_path(data, priority.key))
    except PathNotFound:
        return priority.default_offset
    return priority.rules.get(value, priority.default_offset)


def digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=10).hexdigest()


def _ms(ns: Any) -> int:
    return max(1, int(ns) // MILLISECOND)


# ---- rate windows ----------------------------------------------------------------------------


class RateWindow(msgspec.Struct, frozen=True):
    """When each of the admissions still inside the window began, in ms, oldest first."""

    starts: tuple[int, ...] = ()


@dataclass(frozen=True)
class RateDecision:
    window: RateWindow
    granted: bool
    retry_at_ms: int = 0  # when denied: the earliest time enough units have left the window


def rate_admit(window: RateWindow, now_ms: int, limit: int, period_ms: int, units: int = 1) -> RateDecision:
    """Admit ``units`` at ``now_ms`` if the last ``period_ms`` hold at most ``limit - units``."""
    kept = tuple(t for t in window.starts if t > now_ms - period_ms)
    if units > limit:
        return RateDecision(RateWindow(kept), False, 0)
    if len(kept) + units <= limit:
        return RateDecision(RateWindow(tuple(sorted(kept + (now_ms,) * units))), True)
    # The window frees up once all but limit - units of its entries have left it.
    leaving = kept[len(kept) - (limit - units) - 1]
    return RateDecision(RateWindow(kept), False, leaving + period_ms)


# ---- slot pools ------------------------------------------------------------------------------------


class Waiter(msgspec.Struct, frozen=True, omit_defaults=True):
    """A request in a pool's queue: who, in what order, and whom to tell when granted."""

    holder: str
    rank: float
    run_id: str
    step_id: str = ""
    attempt: int = 0
    instance: int | None = None


class SlotPool(msgspec.Struct, frozen=True, omit_defaults=True):
    size: int = 1
    holders: dict[str, int] = {}  # holder -> when it was granted, in ms
    queue: tuple[Waiter, ...] = ()


@dataclass(frozen=True)
class SlotDecision:
    pool: SlotPool
    granted: bool
    position: int = 0  # when queued: 1 for the head


def slot_acquire(pool: SlotPool, waiter: Waiter, size: int, now_ms: int) -> SlotDecision:
    """Grant ``waiter`` a slot if one is free and nobody queued before it; else queue it."""
    pool = msgspec.structs.replace(pool, size=size)
    if waiter.holder in pool.holders:
        return SlotDecision(pool, True)
    queue = tuple(w for w in pool.queue if w.holder != waiter.holder)
    queue = tuple(sorted(queue + (waiter,), key=_order))
    free = size - len(pool.holders)
    position = queue.index(waiter) + 1
    if position <= free:
        holders = {**pool.holders, waiter.holder: now_ms}
        return SlotDecision(SlotPool(size, holders, tuple(w for w in queue if w.holder != waiter.holder)), True)
    return SlotDecision(SlotPool(size, pool.holders, queue), False, position - max(free, 0))


def slot_release(pool: SlotPool, holder: str, now_ms: int) -> tuple[SlotPool, list[Waiter]]:
    """Free ``holder``'s slot (or drop it from the queue) and grant the queue's head as
    room allows; returns the new pool and the waiters just granted."""
    holders = {h: t for h, t in pool.holders.items() if h != holder}
    queue = [w for w in pool.queue if w.holder != holder]
    granted = []
    while queue and len(holders) < pool.size:
        head = queue.pop(0)
        holders[head.holder] = now_ms
        granted.append(head)
    return SlotPool(pool.size, holders, tuple(queue)), granted


def _order(waiter: Waiter) -> tuple[float, str]:
    return (waiter.rank, waiter.holder)


def holder_id(run_id: str, step_id: str = "", attempt: int = 0, instance: int | None = None) -> str:
    """Who holds a slot: a run (max_runs), or one attempt of a step (of one map element)."""
    if not step_id:
        return run_id
    index = f".i{instance}" if instance is not None else ""
    return f"{run_id}.{step_id}{index}.{attempt}"
