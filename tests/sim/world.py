"""The simulated NATS world that several engines share, on one fake clock.

Theory of operation: everything that would be a server lives here, in plain
dicts, and is changed only from the scheduler's thread:

- ``HistoryStore`` (WORKFLOW_HISTORY + the runs KV): one subject per run, a
  stream-wide sequence, ``WrongLastSequence`` when the expected last subject
  sequence is not the run's last, and ``Nats-Msg-Id`` dedup within a window of
  the fake clock, checked before the expectation (R3) or after it (R1) per seed
  (RELIABILITY.md §2.3). Every append attempt is logged with its writer.
- ``inbox`` and ``tasks``: ``WorkQueue``s (queues.py).
- ``Schedules``: one schedule per (run, timer); it fires its ``timer.fired`` fact
  into the inbox at or after its due time (late by a seeded amount, never early)
  and, like a server-fired schedule, with no message id (not deduplicated).
- ``Leases``: one owner per partition, with a TTL on the fake clock.
- the journal: every task execution, and the faults that touched each task.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import msgspec

from dagnats.domain.actions import DropTask, EnqueueTask, StartTimer
from dagnats.domain.errors import WrongLastSequence
from dagnats.domain.events import STEP_COMPLETED, STEP_FAILED, Event, decode_record, parse_timestamp
from dagnats.domain.fold import fold
from dagnats.domain.state import WorkflowRun, new_run
from dagnats.domain.timers import fired_event

from .queues import Message, WorkQueue

START = datetime(2025, 1, 1, tzinfo=UTC)
PARTITIONS = 4


class EngineCrash(BaseException):
    """Raised at a port call of an engine the scheduler kills: nothing after it happens.
    A BaseException, so the actors' supervision (``except Exception``) cannot catch it."""


def partition(run_id: str) -> int:
    """FNV-1a-32 of the run id, as the server's ``partition()`` mapping."""
    h = 0x811C9DC5
    for byte in run_id.encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h % PARTITIONS


class SimClock:
    """Seconds since ``START``; callbacks registered by engines run when they fall due."""

    def __init__(self) -> None:
        self.mono = 0.0
        self._due: list[tuple[float, int, Callable[[], bool], Callable[[], None]]] = []
        self._order = itertools.count()

    def now(self) -> datetime:
        return START + timedelta(seconds=self.mono)

    def call_later(self, delay: float, alive: Callable[[], bool], callback: Callable[[], None]) -> None:
        heapq.heappush(self._due, (self.mono + max(0.0, delay), next(self._order), alive, callback))

    def run_due(self) -> None:
        while self._due and self._due[0][0] <= self.mono:
            _, _, alive, callback = heapq.heappop(self._due)
            if alive():  # a crashed engine's timers went with it
                callback()

    def next_due(self) -> float | None:
        return self._due[0][0] if self._due else None


@dataclass
class Append:
    """One append attempt, as the store saw it."""

    run_id: str
    writer: str
    expected: int
    last: int  # the run's last sequence when it arrived
    seq: int  # 0 if refused
    zombie: bool  # the writer did not hold the run's partition lease


@dataclass
class HistoryRecord:
    seq: int
    body: bytes
    msg_id: str
    expected: int
    writer: str


class HistoryStore:
    def __init__(self, clock: SimClock, dedup_window: float, dedup_first: bool) -> None:
        self.clock, self.dedup_window, self.dedup_first = clock, dedup_window, dedup_first
        self.records: dict[str, list[HistoryRecord]] = {}
        self.ids: dict[str, float] = {}
        self.snapshots: dict[str, tuple[WorkflowRun, int]] = {}
        self.snapshot_log: list[tuple[WorkflowRun, int]] = []
        self.seq = 0
        self.attempts: list[Append] = []

    def last(self, run_id: str) -> int:
        records = self.records.get(run_id)
        return records[-1].seq if records else 0

    def append(self, run_id: str, body: bytes, expected: int, msg_id: str, writer: str, zombie: bool) -> int:
        last = self.last(run_id)
        attempt = Append(run_id, writer, expected, last, 0, zombie)
        self.attempts.append(attempt)
        stored_at = self.ids.get(msg_id)
        duplicate = stored_at is not None and self.clock.mono - stored_at < self.dedup_window
        if duplicate and self.dedup_first:  # R3: PubAck(duplicate=True) before the expectation
            raise WrongLastSequence(f"duplicate record {msg_id}", duplicate=True)
        if last != expected:
            raise WrongLastSequence(f"wrong last sequence: {last}")
        if duplicate:  # R1: the expectation held, then the id was found
            raise WrongLastSequence(f"duplicate record {msg_id}", duplicate=True)
        self.seq += 1
        self.ids[msg_id] = self.clock.mono
        self.records.setdefault(run_id, []).append(HistoryRecord(self.seq, body, msg_id, expected, writer))
        attempt.seq = self.seq
        return self.seq

    def read_after(self, run_id: str, after_seq: int) -> list[tuple[int, list[Event]]]:
        return [(r.seq, decode_record(r.body)) for r in self.records.get(run_id, []) if r.seq > after_seq]

    def load(self, run_id: str) -> tuple[WorkflowRun | None, int]:
        run, last = self.snapshots.get(run_id, (None, 0))
        for seq, events in self.read_after(run_id, last):
            for event in events:
                run = fold(run or new_run(run_id), event)
            last = seq
        return run, last

    def save_snapshot(self, run: WorkflowRun, last_seq: int) -> None:
        self.snapshots[run.run_id] = (run, last_seq)
        self.snapshot_log.append((run, last_seq))

    def events(self, run_id: str) -> list[Event]:
        return [e for _, events in self.read_after(run_id, 0) for e in events]


@dataclass
class Armed:
    timer: StartTimer
    trace_parent: str
    fire_at: float


class Schedules:
    """Message schedules: fire late (seeded), never early; re-arming replaces; cancel purges."""

    def __init__(self, clock: SimClock, rng: random.Random, max_late: float) -> None:
        self.clock, self.rng, self.max_late = clock, rng, max_late
        self.armed: dict[tuple[str, str], Armed] = {}
        self.fired: list[tuple[float, str]] = []  # (fired at, due): lateness, I6

    def arm(self, run_id: str, timers: list[StartTimer], trace_parent: str) -> None:
        for timer in timers:
            due = (parse_timestamp(timer.due) - self.clock.now()).total_seconds() + self.clock.mono
            late = 0.25 + (self.rng.random() * self.max_late if self.rng.random() < 0.3 else 0.0)
            self.armed[(run_id, timer.timer_id)] = Armed(timer, trace_parent, max(due, self.clock.mono) + late)

    def cancel(self, run_id: str, timer_ids: list[str]) -> None:
        for timer_id in timer_ids:
            self.armed.pop((run_id, timer_id), None)

    def due(self) -> list[Event]:
        ready = sorted(
            ((armed.fire_at, key) for key, armed in self.armed.items() if armed.fire_at <= self.clock.mono),
        )
        fired = []
        for _, key in ready:
            armed = self.armed.pop(key)
            self.fired.append((self.clock.mono, armed.timer.due))
            fired.append(fired_event(key[0], armed.timer, armed.trace_parent))
        return fired

    def next_fire(self) -> float | None:
        return min((a.fire_at for a in self.armed.values()), default=None)


class Leases:
    """Partition leases in KV: claimed when free or lapsed, renewed by the holder."""

    def __init__(self, clock: SimClock, ttl: float) -> None:
        self.clock, self.ttl = clock, ttl
        self.holders: dict[int, tuple[str, float]] = {}
        self.takeovers = 0

    def holder(self, p: int) -> str | None:
        held = self.holders.get(p)
        return held[0] if held is not None and held[1] > self.clock.mono else None

    def claim(self, owner: str, p: int) -> bool:
        current = self.holder(p)
        if current is not None and current != owner:
            return False
        if current is None and p in self.holders and self.holders[p][0] != owner:
            self.takeovers += 1
        self.holders[p] = (owner, self.clock.mono + self.ttl)
        return True


TaskKey = tuple[str, str, int]  # (run, step, attempt)


@dataclass
class Journal:
    """Every task execution, and the faults that may each have caused one more."""

    executions: Counter[TaskKey] = field(default_factory=Counter)
    faults: Counter[TaskKey] = field(default_factory=Counter)
    causes: Counter[str] = field(default_factory=Counter)

    def fault(self, key: TaskKey, cause: str) -> None:
        self.faults[key] += 1
        self.causes[cause] += 1


def task_key(task: EnqueueTask) -> TaskKey:
    return (task.payload.run_id, task.payload.step_id, task.payload.attempt)


class World:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.clock = SimClock()
        now = lambda: self.clock.mono
        # Per-seed semantics: which way the dedup check goes, how long the windows are.
        self.history = HistoryStore(self.clock, rng.choice([30.0, 120.0]), dedup_first=rng.random() < 0.5)
        stale_acks = rng.random() < 0.5
        self.inbox = WorkQueue(now, rng.choice([5.0, 30.0]), rng.choice([30.0, 120.0]), stale_acks)
        self.tasks = WorkQueue(now, rng.choice([5.0, 30.0]), rng.choice([60.0, 600.0]), stale_acks)
        self.schedules = Schedules(self.clock, rng, max_late=rng.choice([1.0, 10.0, 60.0]))
        self.leases = Leases(self.clock, ttl=10.0)
        self.journal = Journal()
        self.published: list[Event] = []  # every fact published to an inbox, for duplicates
        self.actor_crashes: list[str] = []  # supervised RunActor crashes (none is injected)

    # ---- facts and tasks --------------------------------------------------------------

    def publish_fact(self, event: Event, msg_id: str | None = None, delay: float = 0.0) -> Message | None:
        """A fact into its run's inbox; ``msg_id`` defaults to ``<run>.<fact id>`` (publish_fact)."""
        self.published.append(event)
        mid = f"{event.run_id}.{event.id}" if msg_id is None else msg_id
        return self.inbox.publish(event.run_id, event.run_id, event, mid, delay)

    def publish_tasks(self, tasks: list[EnqueueTask]) -> list[EnqueueTask]:
        """As ``publish_tasks``: one message per task, deduplicated by run, step, attempt
        (a duplicate neither queued nor answered goes out again as ``reissued``); the
        tasks stored."""
        stored = []
        for task in tasks:
            if self._publish_task(task):
                stored.append(task)
            elif not task.variant and not self._accounted_for(task) and self._publish_task(_reissued(task)):
                stored.append(_reissued(task))
        return stored

    def _publish_task(self, task: EnqueueTask) -> bool:
        p = task.payload
        suffix = f".{task.variant}" if task.variant else ""
        index = f".i{p.instance}" if p.instance is not None else ""
        msg_id = f"{p.run_id}.{p.step_id}{index}.{p.attempt}{suffix}"
        return self.tasks.publish(p.run_id, task.task, task, msg_id) is not None

    def reissue(self, tasks: list[EnqueueTask]) -> None:
        """``NatsTaskPort.enqueue``: only tasks neither queued nor answered, under their own id."""
        lost = [t for t in tasks if not self._accounted_for(t)]
        self.publish_tasks([_reissued(t) for t in lost])

    def _accounted_for(self, task: EnqueueTask) -> bool:
        p = task.payload
        for m in self.tasks.messages.values():
            q = m.body.payload
            if (q.run_id, q.step_id, q.attempt, q.instance) == (p.run_id, p.step_id, p.attempt, p.instance):
                return True
        for m in self.inbox.messages.values():
            f = m.body
            if f.run_id == p.run_id and f.type in (STEP_COMPLETED, STEP_FAILED):
                if (f.step_id, f.attempt, f.instance) == (p.step_id, p.attempt, p.instance):
                    return True
        return False

    def drop_tasks(self, drops: list[DropTask]) -> None:
        for drop in drops:
            for m in list(self.tasks.messages.values()):
                q = m.body.payload
                same = drop.instance is None or q.instance == drop.instance
                if q.run_id == drop.run_id and q.step_id == drop.step_id and q.attempt <= drop.up_to_attempt and same:
                    self.tasks.delete(m)

    # ---- time -------------------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        self.clock.mono += seconds
        for event in self.schedules.due():
            self.publish_fact(event, msg_id="")  # a schedule's fire carries no message id
        self.inbox.expire()
        before = len(self.tasks.expired)
        self.tasks.expire()
        for m in self.tasks.expired[before:]:
            self.journal.fault(task_key(m.body), "task ack_wait expired")
        self.clock.run_due()

    def next_event(self) -> float | None:
        """The next moment something happens by itself (quiet phase: jump there)."""
        times = [
            t
            for t in (
                self.schedules.next_fire(),
                self.inbox.next_change(),
                self.tasks.next_change(),
                self.clock.next_due(),
            )
            if t is not None
        ]
        return min(times) if times else None


def _reissued(task: EnqueueTask) -> EnqueueTask:
    return msgspec.structs.replace(task, variant="reissued")
