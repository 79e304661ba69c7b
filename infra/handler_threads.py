"""The threads sync task handlers run on, and how a stopped worker leaves them.

Python joins a ThreadPoolExecutor's threads when the interpreter exits, so a
single handler that never returns would keep a stopped worker's process alive
for ever, long after its task went back to the queue. ``HandlerThreads``
knows which handlers are still running; once the worker has drained, a
process that would otherwise wait on them ends at once instead
(``exit_if_handlers_hang``). ``os._exit`` rather than daemon threads: it also
covers threads a handler started itself, and a daemon thread holding a lock
the interpreter needs at shutdown (stdout's, say) would abort or hang it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from opentelemetry import trace

log = logging.getLogger("dagnats.worker")

SPAN_FLUSH_MILLIS = 2000  # os._exit skips the tracer's own flush at exit


class HandlerThreads(ThreadPoolExecutor):
    """A thread pool that can tell how many of its calls are running now."""

    def __init__(self, size: int) -> None:
        super().__init__(size, thread_name_prefix="dagnats-task")
        self._calls: set[Future[Any]] = set()
        self._calls_lock = threading.Lock()  # done callbacks run on the pool's threads

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        call = super().submit(fn, *args, **kwargs)
        with self._calls_lock:
            self._calls.add(call)
        call.add_done_callback(self._forget)
        return call

    def running(self) -> int:
        """How many submitted calls have started and not yet returned."""
        with self._calls_lock:
            return sum(call.running() for call in self._calls)

    def _forget(self, call: Future[Any]) -> None:
        with self._calls_lock:
            self._calls.discard(call)


def exit_if_handlers_hang(threads: HandlerThreads | None, worker_id: str) -> None:
    """End the process now if handlers still run after the worker stopped.

    Only when the worker owns the process (it runs on the main thread): a
    worker run on a thread of some larger program leaves that program alone.
    """
    hung = threads.running() if threads is not None else 0
    if not hung:
        return
    if threading.current_thread() is not threading.main_thread():
        log.warning("worker %s stopped with %d task handlers still running", worker_id, hung)
        return
    log.warning(
        "worker %s: %d task handlers still running after the drain timeout; exiting without them", worker_id, hung
    )
    _flush_before_exit()
    os._exit(0)


def _flush_before_exit() -> None:
    """Write out what atexit hooks would have: spans, log records, stdio."""
    force_flush = getattr(trace.get_tracer_provider(), "force_flush", None)
    with contextlib.suppress(Exception):
        if force_flush is not None:
            force_flush(SPAN_FLUSH_MILLIS)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
