"""RunDirectory: routes facts to run actors, starting, supervising and
passivating them.

Theory of operation: the directory is the only sender to run actors.
Deliveries for a run start its actor on demand (the actor rebuilds itself
from snapshot + history). Live actors are bounded: beyond ``max_live`` the
least recently used actor is asked to passivate (it handles what is already
in its inbox, snapshots and stops; each pykka actor is a thread), and a run
that ended passivates at once. While an actor passivates, deliveries for its
run wait in the directory and go to a fresh actor once it has stopped, so
one process never runs two actors for the same run. When the engine loses a
partition (``LetGo``), the actors of its runs stop the same way, writing no more
snapshots (a young run handed over is listed first): the runs' new owner keeps them.

A fired timer of a run that ended is dropped here: a finished run's actor is
not started again for it. A crashed actor is dropped; the next delivery
rebuilds it from history. A run whose actor keeps crashing (a poison run) is
quarantined: after ``QUARANTINE_AFTER`` crashes in a row its facts are
redelivered only every ``quarantine_retry`` seconds (by the injected clock)
— kept, not lost, and not spinning the engine — until one is handled. A
crash because NATS did not answer (``Unavailable``: a node lost, leaders being
elected) is an outage every live run meets, not poison: it does not count.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Any

import pykka

from dagnats.domain.events import TimerFired, WorkflowStarted
from dagnats.domain.partition import partition_of

from .messages import (
    Crashed,
    Deliver,
    Deliveries,
    Healthy,
    Index,
    IndexDue,
    LetGo,
    LiveCount,
    Passivate,
    Passivated,
    Rebuild,
)
from .ports import Ports
from .run import RunActor
from .threads import LeanActor

log = logging.getLogger("dagnats.directory")
QUARANTINE_AFTER = 5
QUARANTINE_RETRY = 30.0
# How many ended runs the directory remembers, to drop their late timer fires.
FINISHED_MEMORY = 10_000
# A run started this long ago whose actor is still live is listed in the snapshot index.
INDEX_AFTER = 1.0
# How long a stopping directory waits for its live runs' index snapshots, all together.
STOP_INDEXING = 5.0
# A run whose actor crashed on a NATS outage is brought up again this long after.
REBUILD_AFTER = 2.0


class RunDirectory(LeanActor):
    use_daemon_thread = True
    run_actor: type[RunActor] = RunActor  # the runtime of its run actors (``actors.runtime``)

    def __init__(
        self, ports: Ports, timers: Any, max_live: int = 512, quarantine_retry: float = QUARANTINE_RETRY
    ) -> None:
        super().__init__()
        self.ports, self.timers, self.max_live = ports, timers, max_live
        self.quarantine_retry = quarantine_retry
        self.actors: OrderedDict[str, pykka.ActorRef] = OrderedDict()
        self.passivating: dict[str, list[Any]] = {}
        self.crashes: dict[str, int] = {}
        self.finished: OrderedDict[str, None] = OrderedDict()
        self._next_try: dict[str, float] = {}
        # Runs started here and not listed in the snapshot index yet -> when to list them.
        self.unindexed: OrderedDict[str, float] = OrderedDict()
        self._tick_armed = False

    def on_start(self) -> None:
        threading.current_thread().name = "RunDirectory"

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Deliver):
            self._route(message)
        elif isinstance(message, Deliveries):
            for delivery in message.deliveries:
                self._route(delivery)
        elif isinstance(message, Passivate):
            self._passivate(message.run_id)
        elif isinstance(message, LetGo):
            self._let_go(message)
        elif isinstance(message, IndexDue):
            self._index_due()
        elif isinstance(message, Passivated):
            self._passivated(message)
        elif isinstance(message, Crashed):
            self._crashed(message)
        elif isinstance(message, Rebuild):
            self._rebuild(message)
        elif isinstance(message, Healthy):
            self.crashes.pop(message.run_id, None)
            self._next_try.pop(message.run_id, None)
        elif isinstance(message, LiveCount):
            return len(self.actors)
        return None

    def on_stop(self) -> None:
        # A run not in the snapshot index yet is listed now: the engine that takes its
        # partition over brings it up from there.
        listing = [ref for run_id, ref in self.actors.items() if run_id in self.unindexed]
        for run_id, ref in self.actors.items():
            if run_id in self.unindexed:
                _tell(ref, Index(run_id, wait=True))
        for ref in list(self.actors.values()):
            ref.stop(block=False)
        self._wait_stopped(listing)

    def _wait_stopped(self, refs: list[pykka.ActorRef]) -> None:
        deadline = time.monotonic() + STOP_INDEXING  # a bound on shutdown, not a decision
        for ref in refs:
            ref.actor_stopped.wait(max(0.0, deadline - time.monotonic()))

    def _route(self, message: Deliver) -> None:
        run_id = message.run_id
        if run_id in self.finished and _only_timers(message):
            message.done(True)  # the run ended: nothing waits on its timers any more
            return
        if self.crashes.get(run_id, 0) >= QUARANTINE_AFTER and self._held_back(message):
            return
        if run_id in self.passivating:
            self.passivating[run_id].append(message)
            return
        ref = self.actors.get(run_id)
        if ref is None or not ref.is_alive():
            ref = self._start(run_id, fresh=_starts_run(message))
        else:
            self.actors.move_to_end(run_id)
        ref.tell(message)

    def _held_back(self, message: Deliver) -> bool:
        """Quarantine: one try per retry period; the other deliveries wait in the inbox."""
        now = self.ports.clock.monotonic()
        if now >= self._next_try.get(message.run_id, 0.0):
            self._next_try[message.run_id] = now + self.quarantine_retry
            return False
        message.done(False, self.quarantine_retry)
        return True

    def _start(self, run_id: str, fresh: bool = False) -> pykka.ActorRef:
        recovering = run_id in self.crashes
        ref = self.run_actor.start(run_id, self.ports, self.actor_ref, self.timers, fresh, recovering)
        self.actors[run_id] = ref
        if fresh:
            self._index_later(run_id)
        self._evict_lru()
        return ref

    def _index_later(self, run_id: str) -> None:
        """A new run is listed in the snapshot index only if it lives ``INDEX_AFTER``: a
        quick run writes one snapshot, not two and a purge. Until then its start, its
        tasks and its timers are stored, and whatever it waits on reaches its owner (an
        engine that takes it over loads it, re-issuing what it waits on, at that fact)."""
        self.unindexed[run_id] = self.ports.clock.monotonic() + INDEX_AFTER
        self.unindexed.move_to_end(run_id)
        if not self._tick_armed:
            self._arm_tick(INDEX_AFTER)

    def _arm_tick(self, delay: float) -> None:
        self._tick_armed = True
        ref = self.actor_ref
        self.ports.clock.call_later(delay, lambda: _tell(ref, IndexDue()))

    def _index_due(self) -> None:
        self._tick_armed = False
        now = self.ports.clock.monotonic()
        while self.unindexed:
            run_id, due = next(iter(self.unindexed.items()))
            if due > now:
                self._arm_tick(due - now)
                return
            del self.unindexed[run_id]
            live = self.actors.get(run_id)
            if live is not None:  # a passivated run's snapshot indexes it; an ended one needs none
                _tell(live, Index(run_id))

    def _evict_lru(self) -> None:
        # A busy actor handles what it has first: Passivate queues behind it.
        while len(self.actors) > self.max_live:
            run_id = next(iter(self.actors))
            self._passivate(run_id)

    def _passivate(self, run_id: str, snapshot: bool = True) -> None:
        ref = self.actors.pop(run_id, None)
        if ref is None or run_id in self.passivating:
            return
        self.passivating[run_id] = []
        ref.tell(Passivate(run_id, snapshot))

    def _let_go(self, message: LetGo) -> None:
        """Another engine owns these runs now: an actor left here would hold a state that
        stops being current with its owner's next record, and its snapshots (the index
        tick's, its passivation's) could list a run again that has ended there meanwhile.
        Handed over, a young run not listed yet is listed now, as it is when the engine
        stops: its state is the newest (what was fetched has been handled; its new owner
        has not begun). Not after a lapsed lease: another engine may be moving it already."""

        def lost(run_id: str) -> bool:
            return partition_of(run_id, message.partitions) == message.partition

        for run_id in [run_id for run_id in self.unindexed if lost(run_id)]:
            del self.unindexed[run_id]
            if message.handed_over and run_id in self.actors:
                _tell(self.actors[run_id], Index(run_id, wait=True))
        for run_id in [run_id for run_id in self.actors if lost(run_id)]:
            self._passivate(run_id, snapshot=False)

    def _passivated(self, message: Passivated) -> None:
        if message.terminal:
            self.finished[message.run_id] = None
            while len(self.finished) > FINISHED_MEMORY:
                self.finished.popitem(last=False)
        for waiting in self.passivating.pop(message.run_id, []):
            self._route(waiting)

    def _crashed(self, message: Crashed) -> None:
        self.actors.pop(message.run_id, None)
        # NATS not answering is an outage, not a poison run: the run is rebuilt (and knows
        # it is recovering) but no nearer to quarantine.
        count = self.crashes[message.run_id] = self.crashes.get(message.run_id, 0) + (not message.unavailable)
        if message.unavailable:
            ref, rebuild = self.actor_ref, Rebuild(message.run_id)
            self.ports.clock.call_later(REBUILD_AFTER, lambda: _tell(ref, rebuild))
        if count == QUARANTINE_AFTER:
            log.error(
                "run %s quarantined after %d crashes (last: %s); its facts wait %gs between tries",
                message.run_id,
                count,
                message.error,
                self.quarantine_retry,
            )

    def _rebuild(self, message: Rebuild) -> None:
        """Bring up a run crashed on an outage, unless a delivery did meanwhile (or it is
        passivating, or has ended)."""
        run_id = message.run_id
        if run_id in self.actors or run_id in self.passivating or run_id in self.finished:
            return
        self._start(run_id).tell(message)


def _tell(ref: pykka.ActorRef, message: Any) -> None:
    """Tell an actor that may have stopped meanwhile (what it was told no longer matters)."""
    try:
        ref.tell(message)
    except pykka.ActorDeadError:
        pass


def _starts_run(message: Deliver) -> bool:
    """A delivery that opens with the run's start request (nothing to load yet)."""
    return bool(message.events) and isinstance(message.events[0], WorkflowStarted)


def _only_timers(message: Deliver) -> bool:
    return all(isinstance(event, TimerFired) for event in message.events)
