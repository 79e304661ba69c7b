"""The asyncio loop that owns the NATS connection, as seen from actors.

Actors call ``bridge.call(coro)`` to run a coroutine on the loop and wait only
themselves until it finishes (NATS not answering comes back as the domain's
``Unavailable``: ``wire.outage``): an actor on a thread of its own blocks that
thread; an actor hosted on the loop's thread (``actors.hosted``: the run actors
and their directory) parks its greenlet. ``spawn`` fires and forgets. The clock
lives here too: wall time in UTC, and ``call_later`` on the loop.

The caller's run context (``domain/run_context.py``: the run, step and trace
an actor is working for) goes along: a log line of the coroutine on the
loop carries the same ids as one of the actor.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
import weakref
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from dagnats.actors.hosted import hosted_greenlet, park, resume
from dagnats.domain.errors import Unavailable

from ..wire.outage import NATS_UNAVAILABLE

log = logging.getLogger("dagnats.bridge")


class LoopPost:
    """Callbacks for the loop from other threads, run in the order posted, with one wake-up
    of the loop for all those posted while it was busy: ``call_soon_threadsafe`` writes to
    the loop's self-pipe (a system call, the GIL let go and taken back) on every call, and
    actor threads post several callbacks per fact."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._posted: list[tuple[Callable[..., object], tuple[Any, ...]]] = []
        # Posted on the loop's own thread: ``call_soon``, no wake-up needed.
        self._loop_thread = threading.get_ident() if _running(loop) else None

    def __call__(self, callback: Callable[..., object], *args: Any) -> None:
        if threading.get_ident() == self._loop_thread:
            self.loop.call_soon(callback, *args)
            return
        with self._lock:
            self._posted.append((callback, args))
            if len(self._posted) > 1:
                return  # the loop is woken already and has not run them yet
        self.loop.call_soon_threadsafe(self._run)

    def later(self, delay: float, callback: Callable[[], object]) -> None:
        """``callback()`` on the loop ``delay`` seconds from now."""
        self(self.loop.call_later, delay, callback)

    def _run(self) -> None:
        with self._lock:
            posted, self._posted = self._posted, []
        for callback, args in posted:
            try:
                callback(*args)
            except Exception:  # noqa: BLE001 - as the loop reports a failed callback
                log.exception("callback %r failed", callback)


def _running(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


_POSTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopPost] = weakref.WeakKeyDictionary()
_POSTS_LOCK = threading.Lock()


def poster(loop: asyncio.AbstractEventLoop) -> LoopPost:
    """The one ``LoopPost`` of ``loop``."""
    with _POSTS_LOCK:
        post = _POSTS.get(loop)
        if post is None:
            post = _POSTS[loop] = LoopPost(loop)
        return post


class LoopBridge:
    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float = 30.0) -> None:
        self.loop, self.timeout = loop, timeout
        self.post = poster(loop)
        self._tasks: set[asyncio.Task[Any]] = set()  # strong references while they run

    def call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coro`` on the loop and wait for its result.

        From another thread: one task and a lock per call (``asyncio.run_coroutine_threadsafe``
        chains a concurrent future to the task: conditions, callbacks on both sides, which
        every record of every run paid for). From an actor's greenlet on the loop's own
        thread (``actors.hosted``): the coroutine is stepped on that greenlet, parked at
        each await; the loop goes on meanwhile."""
        waiter = _Waiter()
        parked = hosted_greenlet()
        if parked is not None:
            self._park(parked, coro, waiter)
        else:
            self.post(self._begin, coro, waiter.finish, contextvars.copy_context())
            if not waiter.done.acquire(timeout=self.timeout):
                raise self._late()
        if isinstance(waiter.error, NATS_UNAVAILABLE):
            # One error for "NATS did not answer, try again" that actors know without nats.
            raise Unavailable(f"NATS did not answer: {waiter.error!r}") from waiter.error
        if waiter.error is not None:
            raise waiter.error
        return waiter.value

    def _park(self, parked: Any, coro: Coroutine[Any, Any, Any], waiter: _Waiter) -> None:
        """Run ``coro`` on the caller's greenlet (``parked``), stepped as a task would step it:
        between its steps the greenlet is parked until what the coroutine awaits is done,
        and the loop goes on meanwhile. No task, none of its callbacks: a run's records
        and their effects are such calls, several per step. After ``timeout`` what it
        awaits is cancelled, as a task's cancel would."""
        stepping = _Stepping(parked)
        timer = self.loop.call_later(self.timeout, stepping.expire)
        try:
            waiter.value = stepping.run(coro)
        except asyncio.CancelledError:
            raise self._late() from None
        except Exception as err:  # noqa: BLE001 - the caller's to raise, as a task's outcome
            waiter.error = err
        finally:
            timer.cancel()

    def _late(self) -> Unavailable:
        return Unavailable(f"the event loop did not finish a call within {self.timeout:g}s")

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        self.post(self._begin, coro, _log_failure, contextvars.copy_context())

    def _begin(
        self,
        coro: Coroutine[Any, Any, Any],
        then: Callable[[asyncio.Task[Any]], None],
        context: contextvars.Context,
    ) -> asyncio.Task[Any]:
        # In the caller's context: what the coroutine logs carries the caller's run context.
        task = self.loop.create_task(coro, context=context)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(then, context=context)
        return task

    def call_soon(self, callback: Callable[[], None]) -> None:
        self.post(callback)


class _Stepping:
    """A coroutine stepped on an actor's greenlet (``LoopBridge._park``)."""

    __slots__ = ("awaited", "parked")

    def __init__(self, parked: Any) -> None:
        self.parked = parked
        self.awaited: asyncio.Future[Any] | None = None

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        try:
            while True:
                try:
                    awaited = coro.send(None)
                except StopIteration as done:
                    return done.value
                if awaited is None:  # a bare yield (``asyncio.sleep(0)``): the loop's turn
                    asyncio.get_running_loop().call_soon(self._wake, None)
                else:
                    awaited._asyncio_future_blocking = False
                    self.awaited = awaited
                    awaited.add_done_callback(self._wake)
                park()
                self.awaited = None
        finally:
            coro.close()  # abandoned while parked: the coroutine's ``finally`` runs now

    def _wake(self, _done: object) -> None:
        if not self.parked.dead:
            resume(self.parked, None)

    def expire(self) -> None:
        if self.awaited is not None:
            self.awaited.cancel()  # the coroutine sees CancelledError where it awaits


class _Waiter:
    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = threading.Lock()
        self.done.acquire()
        self.value: Any = None
        self.error: BaseException | None = None

    def finish(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            self.error = asyncio.CancelledError()
        else:
            self.error = task.exception()
            if self.error is None:
                self.value = task.result()
        self.done.release()


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("background call failed: %s", task.exception())


class SystemClock:
    """Wall clock in UTC; timers run on the loop."""

    def __init__(self, bridge: LoopBridge) -> None:
        self.bridge = bridge

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        self.bridge.post.later(delay, callback)
