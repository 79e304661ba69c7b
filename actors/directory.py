"""RunDirectory: routes facts to run actors, starting, supervising and
passivating them.

Theory of operation: the directory is the only sender to run actors, so a
run actor whose inbox is empty is idle. Deliveries for a run start its
actor on demand (the actor rebuilds itself from snapshot + history). Live
actors are bounded: beyond ``max_live`` the least recently used idle actor
is passivated (it snapshots and stops; each pykka actor is a thread).
While an actor passivates, deliveries for its run wait in the directory and
go to a fresh actor once it has stopped, so one process never runs two
actors for the same run. A crashed actor is dropped; the next delivery
rebuilds it from history.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Any

import pykka

from dagnats.domain.events import WORKFLOW_STARTED

from .messages import Crashed, Deliver, LiveCount, Passivate, Passivated, Recover
from .ports import Ports
from .run import RunActor

log = logging.getLogger("dagnats.directory")


class RunDirectory(pykka.ThreadingActor):
    use_daemon_thread = True

    def __init__(self, ports: Ports, timers: Any, max_live: int = 512) -> None:
        super().__init__()
        self.ports, self.timers, self.max_live = ports, timers, max_live
        self.actors: OrderedDict[str, pykka.ActorRef] = OrderedDict()
        self.passivating: dict[str, list[Any]] = {}
        # run_id -> (state, last_seq), written by run actors, read by the API.
        self.live: dict[str, tuple] = {}

    def on_start(self) -> None:
        threading.current_thread().name = "RunDirectory"

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, (Deliver, Recover)):
            self._route(message)
        elif isinstance(message, Passivate):
            self._passivate(message.run_id)
        elif isinstance(message, Passivated):
            self._passivated(message.run_id)
        elif isinstance(message, Crashed):
            self.actors.pop(message.run_id, None)
        elif isinstance(message, LiveCount):
            return len(self.actors)
        return None

    def on_stop(self) -> None:
        for ref in list(self.actors.values()):
            ref.stop(block=False)

    def _route(self, message: Deliver | Recover) -> None:
        run_id = message.run_id
        if run_id in self.passivating:
            self.passivating[run_id].append(message)
            return
        ref = self.actors.get(run_id)
        if ref is None or not ref.is_alive():
            ref = self._start(run_id, fresh=_starts_run(message))
        else:
            self.actors.move_to_end(run_id)
        ref.tell(message)

    def _start(self, run_id: str, fresh: bool = False) -> pykka.ActorRef:
        ref = RunActor.start(run_id, self.ports, self.actor_ref, self.timers, self.live, fresh)
        self.actors[run_id] = ref
        self._evict_idle()
        return ref

    def _evict_idle(self) -> None:
        excess = len(self.actors) - self.max_live
        if excess <= 0:
            return
        for run_id, ref in list(self.actors.items())[:-1]:
            if excess <= 0:
                break
            if ref.actor_inbox.empty():
                self._passivate(run_id)
                excess -= 1

    def _passivate(self, run_id: str) -> None:
        ref = self.actors.pop(run_id, None)
        if ref is None or run_id in self.passivating:
            return
        self.passivating[run_id] = []
        ref.tell(Passivate(run_id))

    def _passivated(self, run_id: str) -> None:
        waiting = self.passivating.pop(run_id, [])
        for message in waiting:
            self._route(message)


def _starts_run(message: Deliver | Recover) -> bool:
    """A delivery that opens with the run's start request (nothing to load yet)."""
    return isinstance(message, Deliver) and bool(message.events) and message.events[0].type == WORKFLOW_STARTED
