"""Test doubles of the actors' ports that are not NATS: a clock the test moves.

``FakeClock`` satisfies ``actors.ports.Clock``: ``now()`` and ``monotonic()``
stand still until ``advance(seconds)``, which also runs every ``call_later``
callback that has fallen due, in due order (from the test's thread: actor
callbacks only ``tell``, which is thread-safe).
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta


class FakeClock:
    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime.now(UTC)
        self._mono = 1000.0
        self._due: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        with self._lock:
            heapq.heappush(self._due, (self._mono + max(0.0, delay), next(self._order), callback))

    def pending(self) -> int:
        with self._lock:
            return len(self._due)

    def advance(self, seconds: float) -> int:
        """Move time on; run the callbacks that fell due. Returns how many ran."""
        with self._lock:
            self._now += timedelta(seconds=seconds)
            self._mono += seconds
            due = []
            while self._due and self._due[0][0] <= self._mono:
                due.append(heapq.heappop(self._due)[2])
        for callback in due:
            callback()
        return len(due)
