"""In-memory implementations of the actors' ports, for actor-level tests.

Not a mock of NATS: a small model of what the engine relies on from it — a
conditional append per run (``WrongLastSequence`` when the expected sequence
is not the run's last), message-id deduplication, snapshots as a cache — so
the RunDirectory and RunActor can be driven message by message, with a
FakeClock, and failures injected where a test wants them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from dagnats.domain.actions import Acquire, Action, DropTask, EnqueueTask, Release, StartTimer
from dagnats.domain.errors import WrongLastSequence
from dagnats.domain.events import Event, TimerFired, decode_record
from dagnats.domain.fold import fold
from dagnats.domain.kinds.admission import Answer, awaiting_admission, slot_holders
from dagnats.domain.state import WorkflowRun, new_run

from fakes import FakeClock


class MemoryHistory:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.records: dict[str, list[tuple[int, bytes]]] = {}
        self.ids: dict[str, int] = {}
        self.snapshots: dict[str, tuple[WorkflowRun, int]] = {}
        self.seq = 0
        # Called before each append; raise from it to inject a failure.
        self.before_append: Callable[[str], None] = lambda run_id: None

    def load(self, run_id: str) -> tuple[WorkflowRun | None, int]:
        run, last = self.snapshots.get(run_id, (None, 0))
        for seq, events in self.read_after(run_id, last):
            for event in events:
                run = fold(run or new_run(run_id), event)
            last = seq
        return run, last

    def read_after(self, run_id: str, after_seq: int) -> list[tuple[int, list[Event]]]:
        with self.lock:
            return [(seq, decode_record(body)) for seq, body in self.records.get(run_id, []) if seq > after_seq]

    def append(self, run_id: str, record: bytes, expected_seq: int, msg_id: str) -> int:
        self.before_append(run_id)
        with self.lock:
            if msg_id in self.ids:
                raise WrongLastSequence(f"duplicate record {msg_id}", duplicate=True)
            records = self.records.setdefault(run_id, [])
            last = records[-1][0] if records else 0
            if last != expected_seq:
                raise WrongLastSequence(f"wrong last sequence: {last}")
            self.seq += 1
            records.append((self.seq, record))
            self.ids[msg_id] = self.seq
            return self.seq

    def save_snapshot(self, run: WorkflowRun, last_seq: int, wait: bool, listed: bool = True) -> None:
        with self.lock:
            self.snapshots[run.run_id] = (run, last_seq)

    def events(self, run_id: str) -> list[Event]:
        return [e for _, events in self.read_after(run_id, 0) for e in events]


class MemoryTasks:
    def __init__(self) -> None:
        self.published: list[EnqueueTask] = []
        self.dropped: list[DropTask] = []

    def enqueue(self, tasks: list[EnqueueTask]) -> None:
        self.published += tasks

    def drop(self, drops: list[DropTask]) -> None:
        self.dropped += drops


class MemoryState:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.live: dict[str, tuple[WorkflowRun, int]] = {}

    def publish(self, run: WorkflowRun, last_seq: int, recorded: list[Event]) -> None:
        with self.lock:
            self.live[run.run_id] = (run, last_seq)

    def forget(self, run_id: str) -> None:
        with self.lock:
            self.live.pop(run_id, None)


class MemoryTimers:
    """Schedules by (run, timer id), as the inbox stream holds them; fired facts are collected."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.schedules: dict[tuple[str, str], StartTimer] = {}
        self.fired: list[TimerFired] = []

    def arm(self, run_id: str, timers: list[StartTimer], trace_parent: str) -> None:
        with self.lock:
            self.schedules.update(((run_id, t.timer_id), t) for t in timers)

    def cancel(self, run_id: str, timer_ids: list[str]) -> None:
        with self.lock:
            for timer_id in timer_ids:
                self.schedules.pop((run_id, timer_id), None)

    def fire(self, event: TimerFired) -> None:
        with self.lock:
            self.fired.append(event)


class MemoryOutbox:
    """What runs asked of the world beyond their own records, in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Action]] = []

    def send(self, run_id: str, actions: Sequence[Action], trace_parent: str) -> None:
        self.sent += [(run_id, action) for action in actions]


class AlwaysAlive:
    def alive(self, worker_id: str) -> bool:
        return True


class MemoryLimits:
    """The flow-control bucket: entries with revisions, written by compare-and-set."""

    def __init__(self, history: MemoryHistory) -> None:
        self.lock = threading.Lock()
        self.entries: dict[str, tuple[bytes, int]] = {}
        self.history = history
        self.woken: list[Event] = []

    def load(self, key: str) -> tuple[bytes | None, int]:
        with self.lock:
            value, revision = self.entries.get(key, (None, 0))
            return value, revision

    def save(self, key: str, value: bytes, revision: int) -> int:
        with self.lock:
            current = self.entries.get(key, (b"", 0))[1]
            if current != revision:
                raise WrongLastSequence(f"limit {key} is at {current}, not {revision}")
            self.entries[key] = (value, current + 1)
            return current + 1

    def keys(self) -> list[str]:
        with self.lock:
            return list(self.entries)

    def wake(self, event: Event) -> None:
        with self.lock:
            self.woken.append(event)

    def holders(self, run_id: str) -> tuple[set[str], set[str]] | None:
        run, _ = self.history.load(run_id)
        if run is None or run.definition is None:
            return None
        return slot_holders(run), awaiting_admission(run)


class GrantAll:
    """Flow control that admits everything (tests that do not exercise limits)."""

    def __init__(self) -> None:
        self.released: list[Release] = []

    def acquire(self, acquire: Acquire) -> Answer:
        return Answer(True, tuple(r.key for r in acquire.requests if r.kind == "slots"))

    def release(self, releases: list[Release]) -> None:
        self.released += releases


class MemoryPorts:
    def __init__(self, clock: FakeClock | None = None, max_record_bytes: int = 1024 * 1024 - 4096) -> None:
        self.history = MemoryHistory()
        self.tasks = MemoryTasks()
        self.timers = MemoryTimers()
        self.outbox = MemoryOutbox()
        self.clock = clock or FakeClock()
        self.workers = AlwaysAlive()
        self.state = MemoryState()
        self.limits = MemoryLimits(self.history)
        self.flow: Any = GrantAll()
        self.max_record_bytes = max_record_bytes
        # Where run actors live (``actors.hosted``): on threads of their own unless a test hosts them.
        self.host: Any = None

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
        seq = self.history.append(run_id, body, expected_seq, msg_id)
        self.tasks.published += tasks
        self.timers.arm(run_id, timers, trace_parent)
        return seq
