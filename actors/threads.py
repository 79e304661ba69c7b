"""Threads for short-lived actors: a pykka actor whose loop runs on a reused thread.

Theory of operation: a ``ThreadingActor`` starts a new thread for its loop and the
thread ends with the actor. A run actor lives for one run (milliseconds, for a quick
one), so creating, starting and joining a thread was a fifth of the engine's CPU per
run in a profile. ``PooledActor`` hands its loop to ``ThreadPool`` instead: a thread
that finished an actor's loop waits ``idle`` seconds for the next one, then ends. Each
actor still has a thread of its own for as long as it lives (its loop blocks on its
inbox as pykka's does), so nothing about its semantics changes; the number of threads
follows the live actors and falls back to none when they are gone.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pykka

if TYPE_CHECKING:  # not exported by pykka: the protocol its inboxes follow
    from pykka._actor import ActorInbox

IDLE = 2.0  # seconds an idle pooled thread waits for another actor before it ends


class ThreadPool:
    """Runs each submitted loop on a thread of its own, reusing threads that are idle.

    ``_idle`` counts the waiting threads no submitted loop has claimed yet; a loop is
    only queued for a thread it has claimed, so none waits while its thread ends."""

    def __init__(self, name: str, idle: float = IDLE) -> None:
        self.name, self.idle = name, idle
        self._queue: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0

    def submit(self, loop: Callable[[], None]) -> None:
        with self._lock:
            if self._idle:
                self._idle -= 1
                self._queue.put(loop)
                return
        threading.Thread(target=self._work, args=(loop,), name=self.name, daemon=True).start()

    def _work(self, loop: Callable[[], None]) -> None:
        while True:
            loop()
            with self._lock:
                self._idle += 1
            while True:
                try:
                    loop = self._queue.get(timeout=self.idle)
                    break
                except queue.Empty:
                    with self._lock:
                        if self._idle:  # nobody counts on this thread: it may end
                            self._idle -= 1
                            return
                    # A loop was submitted for this thread as it timed out: take it.

    @property
    def idle_threads(self) -> int:
        return self._idle


class LeanActor(pykka.ThreadingActor):
    """A ``ThreadingActor`` whose inbox is a ``queue.SimpleQueue`` (C, one lock) instead of
    a ``queue.Queue`` (three conditions, in Python): putting and getting are most of a
    hand-off between two threads, and an engine makes several per fact. pykka asks an
    inbox for ``put``, ``get`` and ``empty`` only (``pykka.ActorInbox``)."""

    @staticmethod
    def _create_actor_inbox() -> ActorInbox:
        inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        return inbox


class PooledActor(LeanActor):
    """A ``LeanActor`` whose loop runs on a pooled thread (``pool``, per class)."""

    use_daemon_thread = True
    pool: ThreadPool

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "pool" not in cls.__dict__:
            cls.pool = ThreadPool(cls.__name__)

    def _start_actor_loop(self) -> None:
        self.pool.submit(self._actor_loop)
