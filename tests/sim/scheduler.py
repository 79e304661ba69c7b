"""The seeded scheduler: one ``random.Random(seed)`` decides everything that happens.

Theory of operation: a simulation is a fault phase then a quiet phase, all in the
caller's thread. In the fault phase each step picks one of: start a run (its
``workflow.started`` into the inbox, as the API does), let an engine's actors handle
a message, let an engine renew its leases and fetch a batch of its partitions'
inbox, let a worker run a task, move the fake clock, or inject a fault — kill an
engine (its actors, mailboxes and memory timers vanish; what it held comes back
after ack_wait), restart it, pause it past its lease (another engine takes its
partitions; the zombie later resumes with its stale actors and beliefs, and its
writes meet the expected-sequence fence), duplicate a fact (a copy without a
message id, like a fired schedule), or delay one (reordering). Engines also die
at their port calls, with a seeded probability: between any two "awaits".

The quiet phase stops the faults, restarts and resumes every engine, and runs the
world on (jumping the clock to the next thing due) until every run ended and the
queues are empty, or a time limit passes — then ``invariants.check`` judges.

Given a seed the run is exactly reproducible: the actors run one message at a
time (``mailboxes.py``), and nothing reads the real clock or iterates a set.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from dagnats.domain import events as ev

from .engine import SimEngine
from .workers import SHAPES, Workers
from .world import EngineCrash, World

FAULT_STEPS = 1000
QUIET_STEPS = 3000
QUIET_SECONDS = 4 * 3600.0


@dataclass
class Faults:
    """How hard this seed hits: each kind is off for some seeds."""

    crash_at_point: float
    kill: float
    pause: float
    duplicate: float
    delay: float
    worker_crash: float

    @staticmethod
    def draw(rng: random.Random) -> Faults:
        def maybe(rate: float) -> float:
            return rate if rng.random() < 0.6 else 0.0

        return Faults(
            crash_at_point=maybe(rng.choice([0.005, 0.02, 0.05])),
            kill=maybe(0.02),
            pause=maybe(0.02),
            duplicate=maybe(0.05),
            delay=maybe(0.05),
            worker_crash=maybe(rng.choice([0.05, 0.2])),
        )


@dataclass
class Simulation:
    seed: int
    rng: random.Random = field(init=False)
    world: World = field(init=False)
    engines: list[SimEngine] = field(init=False)
    workers: Workers = field(init=False)
    faults: Faults = field(init=False)
    runs: dict[str, str] = field(default_factory=dict)  # run id -> shape
    states: list[tuple[str, Any, int]] = field(default_factory=list)  # (engine, run, last_seq) published
    trace: list[str] = field(default_factory=list)
    killed: int = 0
    paused: int = 0
    drained: bool = False

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.world = World(self.rng)
        count = self.rng.choice([2, 2, 3])
        self.engines = [SimEngine(f"e{n}", n, self.world, self.rng, self.states) for n in range(count)]
        self.workers = Workers(self.world, self.rng)
        self.faults = Faults.draw(self.rng)
        shapes = sorted(SHAPES)
        for n in range(self.rng.randint(1, 6)):
            self.runs[f"r{self.seed}x{n}"] = self.rng.choice(shapes)
        self._unstarted = list(self.runs)
        self._restart_at: dict[int, float] = {}
        self._resume_at: dict[int, float] = {}

    # ---- the two phases -------------------------------------------------------------------

    def run(self) -> Simulation:
        for engine in self.engines:
            engine.boot()
            engine.renew()
        for engine in self.engines:
            engine.crash_rate = self.faults.crash_at_point
        self.workers.crash_rate = self.faults.worker_crash
        for _ in range(FAULT_STEPS):
            self._fault_step()
        self._quiet()
        return self

    def _fault_step(self) -> None:
        now = self.world.clock.mono
        for index, at in sorted(self._restart_at.items()):
            if at <= now:
                del self._restart_at[index]
                self._note(f"restart {self.engines[index].name}")
                self.engines[index].boot()
        for index, at in sorted(self._resume_at.items()):
            if at <= now:
                del self._resume_at[index]
                self._note(f"resume {self.engines[index].owner} (zombie)")
                self.engines[index].paused = False
        roll = self.rng.random()
        if self._unstarted and roll < 0.03:
            self._start(self._unstarted.pop(0))
        elif roll < 0.5:
            self._actors(self._pick(), self.rng.randint(1, 4))
        elif roll < 0.65:
            self._fetch(self._pick(), self.rng.randint(1, 6))
        elif roll < 0.8:
            self.workers.step()
        elif roll < 0.9:
            self._advance(self.rng.choice([0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 12.0]))
        else:
            self._fault()

    def _quiet(self) -> None:
        self._note("quiet")
        for engine in self.engines:
            engine.crash_rate = 0.0
            if not engine.alive:
                engine.boot()
            engine.paused = False
        self.workers.crash_rate = 0.0
        for _ in range(QUIET_STEPS):
            progressed = False
            for engine in self.engines:
                progressed = self._fetch(engine, 16) or progressed
                progressed = self._actors(engine, 10_000) or progressed
            while self.workers.step():
                progressed = True
            if self._settled():
                self.drained = True
                return
            if not progressed:
                if self.world.clock.mono > QUIET_SECONDS:
                    return
                due = self.world.next_event()
                step = 1.0 if due is None else min(max(due - self.world.clock.mono, 0.01), 5.0)
                self._advance(step)

    def _advance(self, seconds: float) -> None:
        """Move the clock; live engines renew their leases in the background (paused ones cannot)."""
        self.world.advance(seconds)
        for engine in self.engines:
            if engine.alive and not engine.paused:
                engine.renew()

    def _settled(self) -> bool:
        world = self.world
        if self._unstarted or world.inbox.messages or world.tasks.messages:
            return False
        if any(e.boxes.busy() for e in self.engines):
            return False
        return all((world.history.load(r)[0] or _NOT_STARTED).is_terminal for r in self.runs)

    # ---- actions ---------------------------------------------------------------------------

    def _pick(self) -> SimEngine | None:
        ready = [e for e in self.engines if e.alive and not e.paused]
        return self.rng.choice(ready) if ready else None

    def _start(self, run_id: str) -> None:
        shape = SHAPES[self.runs[run_id]]
        fact = ev.WorkflowStarted(
            run_id=run_id,
            timestamp=ev.format_timestamp(self.world.clock.now()),
            id=ev.WORKFLOW_STARTED,
            payload=ev.RunStart(workflow_def=shape, input={"run": run_id}),
        )
        self._note(f"start {run_id} ({self.runs[run_id]})")
        self.world.publish_fact(fact)

    def _actors(self, engine: SimEngine | None, most: int) -> bool:
        if engine is None or not engine.alive or engine.paused:
            return False
        handled = 0
        try:
            while handled < most and engine.step():
                handled += 1
        except EngineCrash as crash:
            self._note(f"crash {crash}")
            self.killed += 1
            self._restart_at[engine.index] = self.world.clock.mono + self.rng.uniform(1.0, 20.0)
        return handled > 0

    def _fetch(self, engine: SimEngine | None, most: int) -> bool:
        if engine is None or not engine.alive or engine.paused:
            return False
        if self.rng.random() < 0.5:
            engine.renew()
            return engine.fetch(most) > 0
        fetched = engine.fetch(most)  # on what it believes it owns: a resumed zombie's stale view
        engine.renew()
        return fetched > 0

    def _fault(self) -> None:
        f, rng, now = self.faults, self.rng, self.world.clock.mono
        kind = rng.choice(["kill", "pause", "duplicate", "delay"])
        if kind == "kill" and rng.random() < f.kill * 10:
            engine = self._pick()
            if engine is not None:
                self._note(f"kill {engine.owner}")
                engine.crash()
                self.killed += 1
                self._restart_at[engine.index] = now + rng.uniform(1.0, 20.0)
        elif kind == "pause" and rng.random() < f.pause * 10:
            engine = self._pick()
            if engine is not None and sum(e.alive and not e.paused for e in self.engines) > 1:
                self._note(f"pause {engine.owner}")
                engine.paused = True
                self.paused += 1
                self._resume_at[engine.index] = now + self.world.leases.ttl * rng.uniform(1.2, 3.0)
        elif kind == "duplicate" and self.world.published and rng.random() < f.duplicate * 10:
            fact = rng.choice(self.world.published)
            self._note(f"duplicate {fact.run_id} {fact.id}")
            self.world.publish_fact(fact, msg_id="")
        elif kind == "delay" and rng.random() < f.delay * 10:
            waiting = self.world.inbox.available(lambda m: True)
            if waiting:
                message = rng.choice(waiting)
                message.available_at = now + rng.uniform(1.0, 30.0)
                self._note(f"delay {message.key} {message.body.id}")

    def _note(self, what: str) -> None:
        self.trace.append(f"{self.world.clock.mono:9.2f} {what}")


class _NotStarted:
    is_terminal = False


_NOT_STARTED: Any = _NotStarted()
