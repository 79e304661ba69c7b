"""The asyncio loop that owns the NATS connection, as seen from actor threads.

Actors call ``bridge.call(coro)`` to run a coroutine on the loop and block
only themselves until it finishes; ``spawn`` fires and forgets. The clock
lives here too: wall time in UTC, and ``call_later`` on the loop.

The caller's run context (``domain/run_context.py``: the run, step and trace
an actor is working for) goes along: a log line of the coroutine on the
loop carries the same ids as one of the actor.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any

from dagnats.domain.run_context import current, restored

log = logging.getLogger("dagnats.bridge")


class LoopBridge:
    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float = 30.0) -> None:
        self.loop, self.timeout = loop, timeout

    def call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coro`` on the loop and wait for its result (from another thread)."""
        future: Future = asyncio.run_coroutine_threadsafe(_carrying(coro, current()), self.loop)
        return future.result(self.timeout)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        asyncio.run_coroutine_threadsafe(_carrying(coro, current(), background=True), self.loop)

    def call_soon(self, callback: Callable[[], None]) -> None:
        self.loop.call_soon_threadsafe(callback)


async def _carrying(coro: Coroutine[Any, Any, Any], context: tuple[str, str, str], background: bool = False) -> Any:
    """``coro`` in the caller's run context; a background call's failure is logged there."""
    with restored(context):
        try:
            return await coro
        except Exception as err:
            if not background:
                raise
            log.warning("background call failed: %s", err)
            return None


class SystemClock:
    """Wall clock in UTC; timers run on the loop."""

    def __init__(self, bridge: LoopBridge) -> None:
        self.bridge = bridge

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        loop = self.bridge.loop
        loop.call_soon_threadsafe(loop.call_later, delay, callback)
