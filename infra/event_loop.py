"""The event loop the engine and the workers run on: uvloop's, where it is installed.

uvloop (libuv under asyncio's API) runs the loop's own work, its callbacks, timers
and socket reads and writes, in C. The engine's CPU is spread thin over that
machinery, nats-py and the fold (docs/benchmarks.md, "An event loop in C"); in
four ABBA pairs of the 3-step chain through the client, with NATS's default
sync, uvloop gave 16-31% more runs per second at 10-23% less engine CPU and
18-31% less worker CPU per run. Everything else is the same: nats-py,
greenlets, uvicorn and the actors run on it unchanged (the test suite runs on
it too).

``DAGNATS_EVENT_LOOP=asyncio`` selects the standard library's loop (to rule the
loop out when chasing a problem); without uvloop installed that is the loop.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

ENV = "DAGNATS_EVENT_LOOP"


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """What makes the loop: uvloop's, unless ``DAGNATS_EVENT_LOOP=asyncio`` or uvloop is not
    installed (None: the standard library's)."""
    if os.environ.get(ENV, "").strip().lower() == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the loop ``loop_factory`` makes."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
