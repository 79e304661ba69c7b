"""One simulated engine process: the real RunDirectory, RunActor and TimerActor on world ports.

The actors are the production classes, subclassed only to run on ``Mailboxes``
instead of pykka threads (``actor_ref`` and ``stop`` go to the mailbox, and the
directory's ``_start`` builds a mailbox actor — a copy of its seven lines). Their
ports (``EnginePorts``) reach the ``World``; every port call is a crash point: the
scheduler may raise ``EngineCrash`` there, before the call or, for a write, after
it landed and before its answer came back. ``record`` carries out its append, task
publishes and timer schedules in a seeded order, as ``asyncio.gather`` may.

Like the real engine it consumes the inbox (here: the partitions it believes it
owns), groups a fetch by run into one ``Deliver`` each, and acks (or NAKs) each
message when the run's actor says so. A partition it claims is recovered as the
real engine recovers at start: an empty delivery for each unfinished run.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from dagnats.actors.directory import RunDirectory
from dagnats.actors.messages import Deliver
from dagnats.actors.run import RunActor
from dagnats.actors.timer import TimerActor
from dagnats.domain.actions import Action, DropTask, EnqueueTask, StartTimer
from dagnats.domain.errors import WrongLastSequence
from dagnats.domain.events import Event, TimerFired
from dagnats.domain.state import WorkflowRun

from .mailboxes import Mailboxes, SimRef
from .queues import Message
from .world import PARTITIONS, EngineCrash, World, partition, task_key
from memory_ports import AlwaysAlive, GrantAll

MAX_RECORD_BYTES = 1024 * 1024 - 4096


class SimRunActor(RunActor):
    sim_ref: SimRef

    @property
    def actor_ref(self) -> Any:
        return self.sim_ref

    def stop(self) -> None:
        self.sim_ref.stop()

    def _crash(self, err: Exception) -> None:
        # Supervised crashes are never injected (EngineCrash passes by): each one is a finding.
        self.ports.engine.world.actor_crashes.append(f"{self.run_id}: {err!r}")
        super()._crash(err)


class SimTimerActor(TimerActor):
    sim_ref: SimRef

    @property
    def actor_ref(self) -> Any:
        return self.sim_ref


class SimDirectory(RunDirectory):
    sim_ref: SimRef
    boxes: Mailboxes

    @property
    def actor_ref(self) -> Any:
        return self.sim_ref

    def _start(self, run_id: str, fresh: bool = False) -> Any:
        # RunDirectory._start, with a mailbox actor for a pykka thread.
        recovering = run_id in self.crashes
        actor = SimRunActor(run_id, self.ports, self.actor_ref, self.timers, fresh, recovering)
        ref = self.boxes.adopt(actor)
        self.actors[run_id] = ref
        if fresh:
            self._index_later(run_id)
        self._evict_lru()
        return ref


class EngineClock:
    def __init__(self, engine: SimEngine) -> None:
        self.engine, self.world = engine, engine.world

    def now(self) -> datetime:
        return self.world.clock.now()

    def monotonic(self) -> float:
        return self.world.clock.mono

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        incarnation = self.engine.incarnation
        self.world.clock.call_later(delay, lambda: self.engine.alive_as(incarnation), callback)


class EngineHistory:
    def __init__(self, engine: SimEngine) -> None:
        self.engine, self.store = engine, engine.world.history

    def load(self, run_id: str) -> tuple[WorkflowRun | None, int]:
        self.engine.point("load")
        return self.store.load(run_id)

    def read_after(self, run_id: str, after_seq: int) -> list[tuple[int, list[Event]]]:
        self.engine.point("read_after")
        return self.store.read_after(run_id, after_seq)

    def append(self, run_id: str, record: bytes, expected_seq: int, msg_id: str) -> int:
        self.engine.point("append")
        seq = self.store.append(run_id, record, expected_seq, msg_id, self.engine.owner, self.engine.zombie(run_id))
        self.engine.point("append landed")
        return seq

    def save_snapshot(self, run: WorkflowRun, last_seq: int, wait: bool, listed: bool = True) -> None:
        self.engine.point("snapshot")
        self.store.save_snapshot(run, last_seq)


class EngineTasks:
    def __init__(self, engine: SimEngine) -> None:
        self.engine = engine

    def enqueue(self, tasks: list[EnqueueTask]) -> None:
        self.engine.point("reissue tasks")
        self.engine.world.reissue(tasks)

    def drop(self, drops: list[DropTask]) -> None:
        self.engine.point("drop tasks")
        self.engine.world.drop_tasks(drops)


class EngineTimers:
    def __init__(self, engine: SimEngine) -> None:
        self.engine, self.world = engine, engine.world

    def arm(self, run_id: str, timers: list[StartTimer], trace_parent: str) -> None:
        self.engine.point("arm timers")
        self.world.schedules.arm(run_id, timers, trace_parent)

    def cancel(self, run_id: str, timer_ids: list[str]) -> None:
        self.world.schedules.cancel(run_id, timer_ids)

    def fire(self, event: TimerFired) -> None:
        # The fast path: TimerActor fired it from memory (never before its due time).
        self.world.schedules.fired.append((self.world.clock.mono, event.payload.due))
        self.world.publish_fact(event)


class EngineOutbox:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Action]] = []

    def send(self, run_id: str, actions: Sequence[Action], trace_parent: str) -> None:
        self.sent += [(run_id, a) for a in actions]


class EngineState:
    """The owned read model; every publish is logged so I7 can compare it with the history."""

    def __init__(self, engine: SimEngine) -> None:
        self.engine = engine

    def publish(self, run: WorkflowRun, last_seq: int, recorded: list[Event]) -> None:
        self.engine.world_log.append((self.engine.owner, run, last_seq))

    def forget(self, run_id: str) -> None:
        pass


class EnginePorts:
    def __init__(self, engine: SimEngine) -> None:
        self.engine = engine
        self.history = EngineHistory(engine)
        self.tasks = EngineTasks(engine)
        self.timers = EngineTimers(engine)
        self.outbox = EngineOutbox()
        self.clock = EngineClock(engine)
        self.workers = AlwaysAlive()
        self.state = EngineState(engine)
        self.flow: Any = GrantAll()
        self.max_record_bytes = MAX_RECORD_BYTES

    def record(
        self,
        run_id: str,
        events: list[Event],
        body: bytes,
        expected_seq: int,
        msg_id: str,
        tasks: list[EnqueueTask],
        timers: list[StartTimer],
        trace_parent: str,
    ) -> int:
        world, engine = self.engine.world, self.engine
        outcome: list[Any] = []

        def append() -> None:
            try:
                outcome.append(
                    world.history.append(run_id, body, expected_seq, msg_id, engine.owner, engine.zombie(run_id))
                )
            except WrongLastSequence as conflict:
                outcome.append(conflict)

        stored: list[EnqueueTask] = []

        def publish() -> None:
            stored.extend(world.publish_tasks(tasks))

        effects = [append]
        if tasks:
            effects.append(publish)
        if timers:
            effects.append(lambda: world.schedules.arm(run_id, timers, trace_parent))
        engine.point("record")
        try:
            for effect in engine.rng.sample(effects, len(effects)):
                effect()
                engine.point("record effect")
        finally:
            if not outcome or isinstance(outcome[0], WrongLastSequence):
                for task in stored:  # dispatched by a record that did not land: may run once more
                    world.journal.fault(task_key(task), "dispatch without its record")
        if isinstance(outcome[0], WrongLastSequence):
            raise outcome[0]
        return int(outcome[0])


class SimEngine:
    def __init__(self, name: str, index: int, world: World, rng: random.Random, world_log: list[Any]) -> None:
        self.name, self.index, self.world, self.rng = name, index, world, rng
        self.world_log = world_log
        self.incarnation = 0
        self.alive = False
        self.paused = False
        self.crash_rate = 0.0
        self.owned: set[int] = set()
        self.crashes = 0

    @property
    def owner(self) -> str:
        return f"{self.name}#{self.incarnation}"

    def alive_as(self, incarnation: int) -> bool:
        return self.alive and self.incarnation == incarnation

    def boot(self) -> None:
        self.incarnation += 1
        self.alive, self.paused, self.owned = True, False, set()
        self.boxes = Mailboxes(self.rng)
        self.ports = EnginePorts(self)
        timer = SimTimerActor(self.ports.clock, self.ports.timers)
        self.timers = self.boxes.adopt(timer)
        directory = SimDirectory(self.ports, self.timers, max_live=self.rng.choice([1, 2, 512]), quarantine_retry=30.0)
        directory.boxes = self.boxes
        self.directory = self.boxes.adopt(directory)

    def crash(self) -> None:
        """kill -9: actors, mailboxes and memory timers are gone; held messages lapse by ack_wait."""
        self.alive, self.paused = False, False
        self.crashes += 1

    def point(self, label: str) -> None:
        if self.crash_rate and self.rng.random() < self.crash_rate:
            self.crash()
            raise EngineCrash(f"{self.owner} at {label}")

    def zombie(self, run_id: str) -> bool:
        return self.world.leases.holder(partition(run_id)) != self.owner

    # ---- the scheduler's calls ------------------------------------------------------------

    def renew(self) -> None:
        """Renew held leases and claim free ones: its own share, and any that lapsed."""
        for p in range(PARTITIONS):
            mine = p % 2 == self.index % 2
            if p in self.owned or mine or self.world.leases.holder(p) is None:
                if self.world.leases.claim(self.owner, p):
                    if p not in self.owned:
                        self.owned.add(p)
                        self._recover(p)
                else:
                    self.owned.discard(p)

    def _recover(self, p: int) -> None:
        for run_id, (run, _) in sorted(self.world.history.snapshots.items()):
            if partition(run_id) == p and not run.is_terminal:
                self.directory.tell(Deliver(run_id, ()))

    def fetch(self, most: int) -> int:
        """Fetch from the partitions it believes it owns; one Deliver per run."""
        msgs = self.world.inbox.fetch(self.owner, lambda m: partition(m.key) in self.owned, most)
        by_run: dict[str, list[Message]] = {}
        for m in msgs:
            by_run.setdefault(m.key, []).append(m)
        for run_id, batch in by_run.items():
            tokens = [(m, m.holder) for m in batch]
            self.directory.tell(Deliver(run_id, tuple(m.body for m in batch), self._acker(tokens)))
        return len(msgs)

    def _acker(self, tokens: list[tuple[Message, Any]]) -> Callable[..., None]:
        def done(ok: bool, retry_in: float = 0.5, repeated: bool = False) -> None:
            self.point("ack")
            for m, token in tokens:
                if ok:
                    self.world.inbox.ack(m, token)
                else:
                    self.world.inbox.nak(m, token, retry_in)

        return done

    def step(self) -> bool:
        return self.boxes.step()
