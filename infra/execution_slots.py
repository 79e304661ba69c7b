"""Execution slots: how many task handlers a worker runs at once, across all its tasks.

Every fetch loop takes slots before it fetches (as many as it may use) and a
finished handler gives its slot back; a loop that finds none free waits its
turn, first come, first served. Closing the slots (a stopping worker) wakes
every waiter with nothing.
"""

from __future__ import annotations

import asyncio
from collections import deque


class ExecutionSlots:
    """Execution slots shared by all fetch loops, granted first come, first served."""

    def __init__(self, size: int) -> None:
        self.free = size
        self._waiters: deque[asyncio.Future[bool]] = deque()
        self._closed = False

    async def take(self, most: int) -> int:
        """Wait for one free slot, then take up to ``most``; 0 once closed."""
        if self._closed:
            return 0
        granted = 0
        if self._waiters or not self.free:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                if not await waiter:
                    return 0
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled() and waiter.result():
                    self.give(1)
                raise
            granted = 1
        if self._closed:
            self.give(granted)
            return 0
        extra = min(most - granted, self.free)
        self.free -= extra
        return granted + extra

    def give(self, count: int) -> None:
        self.free += count
        while self.free and self._waiters and not self._closed:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.free -= 1
                waiter.set_result(True)

    def close(self) -> None:
        self._closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(False)
