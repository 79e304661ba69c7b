"""A deterministic stand-in for pykka's threads: actors run one message at a time.

Each actor gets a mailbox (a deque) and a ``SimRef`` with the ``ActorRef`` calls the
actors use (``tell``, ``is_alive``, ``stop``). The scheduler calls ``step``: a seeded
choice among the actors with mail handles its next message in the scheduler's
thread, so every interleaving of actors is one a thread scheduler could produce and
a seed always produces the same one. ``stop`` queues behind what is already in the
mailbox, as pykka's does; what arrives for a stopped actor is dropped (a pykka
``tell`` would raise ``ActorDeadError``; the actors check ``is_alive`` first).
"""

from __future__ import annotations

import random
from collections import deque
from typing import Any

_STOP = object()


class SimRef:
    def __init__(self, boxes: Mailboxes, key: int) -> None:
        self.boxes, self.key = boxes, key

    def tell(self, message: Any) -> None:
        self.boxes.put(self.key, message)

    def is_alive(self) -> bool:
        return self.key not in self.boxes.stopped

    def stop(self, block: bool = False, timeout: float | None = None) -> None:
        self.boxes.put(self.key, _STOP)


class Mailboxes:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.actors: dict[int, Any] = {}
        self.boxes: dict[int, deque[Any]] = {}
        self.stopped: set[int] = set()
        self.handled = 0

    def adopt(self, actor: Any) -> SimRef:
        key = len(self.actors)
        self.actors[key] = actor
        self.boxes[key] = deque()
        ref = SimRef(self, key)
        actor.sim_ref = ref
        return ref

    def put(self, key: int, message: Any) -> None:
        if key not in self.stopped:
            self.boxes[key].append(message)

    def busy(self) -> bool:
        return any(self.boxes.values())

    def step(self) -> bool:
        """One actor handles one message; False if every mailbox is empty."""
        ready = [key for key, box in self.boxes.items() if box]
        if not ready:
            return False
        key = ready[0] if len(ready) == 1 else self.rng.choice(ready)
        message = self.boxes[key].popleft()
        self.handled += 1
        if message is _STOP:
            self.stopped.add(key)
            self.boxes[key].clear()
            del self.boxes[key]
            return True
        self.actors[key].on_receive(message)
        return True
