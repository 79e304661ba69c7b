"""Step types beyond a worker's task, one module each: how a step of the type starts,
what its facts and timers lead to, and what a rebuilt run asks for again.

Each module registers itself here when imported: ``STARTERS`` (in ``decision``)
by step type, ``FACT_HANDLERS`` by event class (after the core's own), ``TIMER_HANDLERS`` by timer
kind, and ``RECOVERIES`` (run on a rebuilt run, to re-issue what its waiting
steps need from the world: waiters, child runs, requests).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..decision import Decision

FactHandler = Callable[[Decision, Any], None]
TimerHandler = Callable[[Decision, Any], None]

FACT_HANDLERS: dict[type, list[FactHandler]] = {}
TIMER_HANDLERS: dict[str, TimerHandler] = {}
RECOVERIES: list[Callable[[Decision], None]] = []


def on_fact(*classes: type) -> Callable[[FactHandler], FactHandler]:
    def register(handler: FactHandler) -> FactHandler:
        for cls in classes:
            FACT_HANDLERS.setdefault(cls, []).append(handler)
        return handler

    return register


def on_timer(kind: str) -> Callable[[TimerHandler], TimerHandler]:
    def register(handler: TimerHandler) -> TimerHandler:
        TIMER_HANDLERS[kind] = handler
        return handler

    return register


def on_recover(handler: Callable[[Decision], None]) -> Callable[[Decision], None]:
    RECOVERIES.append(handler)
    return handler


from . import admission, approval, children, loops, maps, planner, respond, sleep, waits  # noqa: E402,F401 - they register
