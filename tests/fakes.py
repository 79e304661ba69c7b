"""Test doubles of the actors' ports that are not NATS: a clock the test moves.

``FakeClock`` satisfies ``actors.ports.Clock``: ``now()`` and ``monotonic()``
stand still until ``advance(seconds)``, which also runs every ``call_later``
callback that has fallen due, in due order (from the test's thread: actor
callbacks only ``tell``, which is thread-safe). ``HostLoop`` is an event loop on a thread,
a host for actors.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

T = TypeVar("T")


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


class HostLoop:
    """An event loop on a thread of its own, and its ``LoopPost`` made on it: a host for
    actors (``actors.hosted``), as the engine's loop is."""

    def __init__(self) -> None:
        from dagnats.infra import event_loop
        from dagnats.infra.engine.bridge import poster

        factory = event_loop.loop_factory()  # the engine's kind of loop
        self.loop = factory() if factory is not None else asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.post = self.on_loop(lambda: poster(self.loop))

    def on_loop(self, make: Callable[[], T]) -> T:
        """``make()``, called on the loop (what must be made there, such as its bridge)."""

        async def made() -> T:
            return make()

        return asyncio.run_coroutine_threadsafe(made(), self.loop).result(5)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()
