"""Actors hosted on one thread, each on a greenlet of its own: no thread per actor.

Theory of operation: a ``ThreadingActor`` runs its loop on a thread and blocks that
thread while it waits (for a message, or for the asyncio loop to answer a call). A
``HostedActor`` runs the same pykka loop on a greenlet of the host's thread (the
engine's asyncio loop): where a threaded actor would block, the greenlet switches back
to the host, which goes on with its other work (other actors, NATS), and switches into
the greenlet again once what it waits for is there. Nothing about an actor's semantics
changes: it handles one message at a time, in order; its code is the same, blocking
calls and all. What goes is the hand-off between threads (a lock, a wake-up, the GIL
changing hands), several per fact: a fifth of the engine's CPU per run
(docs/benchmarks.md, "Run actors hosted on the loop").

The host is a ``post(callback, *args)`` that runs callbacks on its thread, outside any
actor's greenlet, in order. An actor waits for a message in ``HostedInbox.get``; a
``put`` (from any thread) posts a wake-up. A blocking call made on an actor's greenlet
(``LoopBridge.call``) parks the greenlet the same way, with ``park``; whatever makes the
outcome known resumes it with ``resume`` on the host thread. A call that blocks the
thread itself (a lock another thread holds, a concurrent future's result) blocks the
host and every actor on it: such a call goes to a thread of its own while the actor is
parked (flow control's acquire: ``infra.engine.ports.OffLoop``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import greenlet
import pykka

__all__ = [
    "Abandoned",
    "Host",
    "HostedActor",
    "HostedGreenlet",
    "host_of",
    "hosted_greenlet",
    "park",
    "resume",
    "wait_until",
]


class Host(Protocol):
    def __call__(self, callback: Callable[..., object], *args: Any) -> None:
        """Run ``callback(*args)`` on the host's thread, after what was posted before."""

    def later(self, delay: float, callback: Callable[[], object]) -> None:
        """Run ``callback()`` on the host's thread ``delay`` seconds from now (wall time)."""


class HostedGreenlet(greenlet.greenlet):
    """An actor's greenlet: code that finds itself on one parks instead of blocking."""

    __slots__ = ()


def hosted_greenlet() -> HostedGreenlet | None:
    """The actor greenlet the caller runs on, if any."""
    current = greenlet.getcurrent()
    return current if isinstance(current, HostedGreenlet) else None


class Abandoned(Exception):
    """The host let go of a parked actor (its greenlet collected, at shutdown): an error the
    actor's own handlers see, not the ``GreenletExit`` pykka would answer by stopping every
    actor there is and waiting for them."""


def _to_host() -> Any:
    current = greenlet.getcurrent()
    assert current.parent is not None, "parked outside an actor greenlet"
    return current.parent.switch()


def park() -> Any:
    """Switch from the current actor greenlet back to the host; what it is resumed with."""
    try:
        return _to_host()
    except greenlet.GreenletExit:
        raise Abandoned("the host let go of this actor while it waited") from None


class HostedInbox:
    """pykka's inbox protocol (``put``, ``get``, ``empty``) for a hosted actor."""

    __slots__ = ("actor", "queue", "waiting")

    def __init__(self) -> None:
        self.queue: deque[Any] = deque()
        self.waiting = False
        self.actor: HostedActor | None = None

    def put(self, envelope: Any) -> None:
        self.queue.append(envelope)
        actor = self.actor
        if actor is not None:
            actor.host(actor._wake)

    def get(self) -> Any:
        while not self.queue:
            self.waiting = True
            _to_host()  # a GreenletExit here ends the actor's loop quietly: it had nothing to do
        return self.queue.popleft()

    def empty(self) -> bool:
        return not self.queue


class HostedActor(pykka.Actor):
    """A pykka actor whose loop runs on a greenlet of ``host``'s thread."""

    host: Host
    _greenlet: HostedGreenlet | None = None

    @staticmethod
    def _create_actor_inbox() -> Any:
        return HostedInbox()

    @staticmethod
    def _create_future() -> pykka.Future[Any]:
        return pykka.ThreadingFuture()

    def on_start(self) -> None:
        """Nothing: the thread is the host's, not the actor's to name (a threaded actor of a
        class hosted here names its thread in its own ``on_start``)."""

    def _start_actor_loop(self) -> None:
        inbox: HostedInbox = self.actor_inbox  # type: ignore[assignment]
        inbox.actor = self
        self.host(self._begin)

    def _begin(self) -> None:
        self._greenlet = HostedGreenlet(self._actor_loop, parent=greenlet.getcurrent())
        self._greenlet.switch()

    def _wake(self) -> None:
        inbox: HostedInbox = self.actor_inbox  # type: ignore[assignment]
        if inbox.waiting and inbox.queue and self._greenlet is not None and not self._greenlet.dead:
            inbox.waiting = False
            self._greenlet.switch()


def host_of(ports: Any) -> Host | None:
    """The host that ``ports`` name for their actors (``ports.host``), if any: the engine's
    ports name the loop's; ports without one (in memory, in tests) have actors on threads."""
    return getattr(ports, "host", None)


def wait_until(done: Callable[[], bool], timeout: float, host: Host, poll: float = 0.05) -> bool:
    """On an actor greenlet: park until ``done()`` (checked every ``poll`` seconds) or
    ``timeout`` has passed; whether it is done."""
    parked = hosted_greenlet()
    assert parked is not None, "wait_until outside an actor greenlet"
    waited = 0.0
    while not done() and waited < timeout:
        host.later(poll, lambda: resume(parked, None))
        park()
        waited += poll
    return done()


def resume(parked: HostedGreenlet, value: Any) -> None:
    """Switch into ``parked`` (from the host thread) with ``value`` as what ``park`` returns."""
    parked.switch(value)
