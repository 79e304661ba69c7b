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
# A rate window forgets a waiter it has not heard from in this long (or ten periods).
WAITING_KEPT_MS = 600_000


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


def step_limits(
    defn: WorkflowDef, step: StepDef, data: Any, since_ms: int, with_rates: bool = True
) -> list[LimitRequest]:
    """The limits a step's task passes before it is dispatched (raises LimitProblem)."""
    requests = []
    if step.rate_limit is not None and with_rates:
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
    if step.keyed_rate_limit is not None and with_rates:
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


def slot_keys(defn: WorkflowDef, step: StepDef) -> tuple[str, ...]:
    """The slot pools a step's attempts queue in or hold (they do not depend on its input)."""
    return tuple(r.key for r in step_limits(defn, step, None, 0, with_rates=False) if r.kind == SLOTS)


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


class RateWindow(msgspec.Struct, frozen=True, omit_defaults=True):
    """The admissions still inside the window: (when in ms, holder, units), oldest first;
    and, for whoever lists the limits, the rule it was last asked under."""

    entries: tuple[tuple[int, str, int], ...] = ()
    # Holders told to wait, and since when (ms): who queues for this limit, for the listing.
    # (holder, since, last asked), in ms: a waiter not heard from in a while is forgotten.
    waiting: tuple[tuple[str, int, int], ...] = ()
    limit: int = 0
    period_ms: int = 0
    about: str = ""

    def used(self) -> int:
        return sum(units for _, _, units in self.entries)


@dataclass(frozen=True)
class RateDecision:
    window: RateWindow
    granted: bool
    retry_at_ms: int = 0  # when denied: the earliest time enough units have left the window
    at_ms: int = 0  # when granted: the instant the window counts the units at


def rate_admit(
    window: RateWindow, now_ms: int, limit: int, period_ms: int, units: int = 1, holder: str = ""
) -> RateDecision:
    """Admit ``units`` at ``now_ms`` if the last ``period_ms`` hold at most ``limit - units``.

    A holder asking again (a retried request, or a step asking once more after
    another of its limits said wait) is not counted twice: its earlier entry
    moves to now if the window has room, else stays where it was.
    """
    kept = tuple(e for e in window.entries if e[0] > now_ms - period_ms)
    others = tuple(e for e in kept if not (holder and e[1] == holder))
    stale = now_ms - max(10 * period_ms, WAITING_KEPT_MS)
    waiting = tuple(w for w in window.waiting if w[0] != holder and w[-1] > stale)
    rule = {"limit": limit, "period_ms": period_ms}
    used = sum(e[2] for e in others)
    if units <= limit and used + units <= limit:
        entries = tuple(sorted((*others, (now_ms, holder, units))))
        admitted = msgspec.structs.replace(window, entries=entries, waiting=waiting, **rule)
        return RateDecision(admitted, True, at_ms=now_ms)
    since = next((w[1] for w in window.waiting if w[0] == holder), now_ms)
    if holder:
        waiting = (*waiting, (holder, since, now_ms))
    denied = msgspec.structs.replace(window, entries=kept, waiting=waiting, **rule)
    if units > limit:
        return RateDecision(denied, False, 0)
    # Room comes back once enough of the oldest units have left the window.
    excess, freed = used + units - limit, 0
    for when, _, count in others:
        freed += count
        if freed >= excess:
            return RateDecision(denied, False, when + period_ms)
    return RateDecision(denied, False, now_ms + period_ms)  # unreachable: others hold the excess


# ---- slot pools ------------------------------------------------------------------------------------


class Waiter(msgspec.Struct, frozen=True, array_like=True):
    """A request in a pool's queue: who, in what order, since when (ms). Compact on the
    wire (an array): a pool's queue of thousands of runs stays one KV entry."""

    holder: str
    rank: float
    since: int = 0

    @property
    def run_id(self) -> str:
        return self.holder.split(".", 1)[0]

    @property
    def step(self) -> tuple[str, int, int | None]:
        """(step id, attempt, map element) of a step's holder; ("", 0, None) for a run."""
        parts = self.holder.split(".")
        if len(parts) == 3:
            return parts[1], int(parts[2]), None
        if len(parts) == 4:
            return parts[1], int(parts[3]), int(parts[2][1:])
        return "", 0, None


class SlotPool(msgspec.Struct, frozen=True, omit_defaults=True):
    size: int = 1
    holders: dict[str, int] = {}  # holder -> when it was granted, in ms
    queue: tuple[Waiter, ...] = ()
    about: str = ""  # the rule, for whoever lists the limits


@dataclass(frozen=True)
class SlotDecision:
    pool: SlotPool
    granted: bool
    position: int = 0  # when queued: 1 for the head


def slot_acquire(pool: SlotPool, waiter: Waiter, size: int, now_ms: int) -> SlotDecision:
    """Grant ``waiter`` a slot if one is free and nobody queued before it; else queue it
    (asking again keeps its place and the time it joined)."""
    pool = msgspec.structs.replace(pool, size=size)
    if waiter.holder in pool.holders:
        return SlotDecision(pool, True)
    earlier = next((w for w in pool.queue if w.holder == waiter.holder), None)
    waiter = msgspec.structs.replace(waiter, since=earlier.since if earlier is not None else now_ms)
    queue = tuple(sorted((*(w for w in pool.queue if w.holder != waiter.holder), waiter), key=_order))
    free = size - len(pool.holders)
    position = queue.index(waiter) + 1
    if position <= free:
        holders = {**pool.holders, waiter.holder: now_ms}
        rest = tuple(w for w in queue if w.holder != waiter.holder)
        return SlotDecision(msgspec.structs.replace(pool, holders=holders, queue=rest), True)
    return SlotDecision(msgspec.structs.replace(pool, queue=queue), False, position - max(free, 0))


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
    return msgspec.structs.replace(pool, holders=holders, queue=tuple(queue)), granted


def _order(waiter: Waiter) -> tuple[float, str]:
    return (waiter.rank, waiter.holder)


def holder_id(run_id: str, step_id: str = "", attempt: int = 0, instance: int | None = None) -> str:
    """Who holds a slot: a run (max_runs), or one attempt of a step (of one map element)."""
    if not step_id:
        return run_id
    index = f".i{instance}" if instance is not None else ""
    return f"{run_id}.{step_id}{index}.{attempt}"
