"""What actors need from the world, as protocols.

Implementations live in ``infra/`` and run on the asyncio loop that owns
the NATS connection; these methods are called from actor threads and block
only the calling actor until the loop has done the work.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol

from dagnats.domain.actions import Acquire, Action, DropTask, EnqueueTask, Release, StartTimer
from dagnats.domain.errors import WrongLastSequence
from dagnats.domain.events import Event, TimerFired
from dagnats.domain.kinds.admission import Answer
from dagnats.domain.state import WorkflowRun

__all__ = [
    "Clock",
    "FlowPort",
    "LimitStore",
    "HistoryPort",
    "OutboxPort",
    "Ports",
    "StatePort",
    "TaskPort",
    "TimerPort",
    "WorkerLiveness",
    "WrongLastSequence",
]


class HistoryPort(Protocol):
    def load(self, run_id: str) -> tuple[WorkflowRun | None, int]:
        """Snapshot plus the history after it: (state or None, last sequence)."""

    def read_after(self, run_id: str, after_seq: int) -> list[tuple[int, list[Event]]]:
        """Records of the run's history after ``after_seq``, with their sequences."""

    def append(self, run_id: str, record: bytes, expected_seq: int, msg_id: str) -> int:
        """Append one encoded record; returns its sequence or raises WrongLastSequence."""

    def save_snapshot(self, run: WorkflowRun, last_seq: int, wait: bool, listed: bool = True) -> None:
        """Cache the state in KV (a cache: never ahead of history). ``listed=False``: the
        run was never put in the snapshot index of unfinished runs (nothing to take out)."""


class TaskPort(Protocol):
    def enqueue(self, tasks: list[EnqueueTask]) -> None:
        """Re-issue tasks of a rebuilt run that are neither queued nor answered."""

    def drop(self, drops: list[DropTask]) -> None:
        """Delete still-queued tasks of attempts the run has moved past."""


class TimerPort(Protocol):
    def arm(self, run_id: str, timers: list[StartTimer], trace_parent: str) -> None:
        """Store the timers' schedules durably (re-arming one replaces it)."""

    def cancel(self, run_id: str, timer_ids: list[str]) -> None:
        """Drop the timers' schedules (in the background: a late fire is ignored anyway)."""

    def fire(self, event: TimerFired) -> None:
        """Put a timer's fact into its run's inbox now (the in-memory fast path)."""


class OutboxPort(Protocol):
    def send(self, run_id: str, actions: Sequence[Action], trace_parent: str) -> None:
        """Carry out what a record asks of the world beyond tasks and timers: approval
        requests, event waiters, child runs, facts for other runs. Blocks until done (a
        crash before then redelivers the fact, and the rebuilt run asks again)."""


class LimitStore(Protocol):
    """Flow control's state: one KV entry per limit key, changed by compare-and-set."""

    def load(self, key: str) -> tuple[bytes | None, int]:
        """The entry's value (None if absent) and its revision (0 if absent)."""

    def save(self, key: str, value: bytes, revision: int) -> int:
        """Write if the entry is still at ``revision``; the new revision (raises
        WrongLastSequence if someone else wrote meanwhile)."""

    def keys(self) -> list[str]:
        """Every limit key."""

    def wake(self, event: Event) -> None:
        """Tell a run that one of its queued attempts now holds its slot: the fact into its
        inbox (in the background)."""

    def holders(self, run_id: str) -> tuple[set[str], set[str]] | None:
        """Who, of that run, may hold or queue for slots now (``slot_holders``), and who of
        them waits for admission (``awaiting_admission``); None if the run does not exist."""


class FlowPort(Protocol):
    """Flow control as a run sees it (``actors.flow.FlowControl``)."""

    def acquire(self, acquire: Acquire) -> Answer:
        """Ask every limit ``acquire`` names; blocks until flow control answers."""

    def release(self, releases: list[Release]) -> None:
        """Free slots (in the background)."""


class Clock(Protocol):
    def now(self) -> datetime: ...

    def monotonic(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> None: ...


class WorkerLiveness(Protocol):
    def alive(self, worker_id: str) -> bool:
        """Whether the worker has been heard from in the last few seconds."""


class StatePort(Protocol):
    """Where a live run's state is published for readers (the owned read model)."""

    def publish(self, run: WorkflowRun, last_seq: int, recorded: list[Event]) -> None:
        """The state after ``last_seq``; ``recorded``: the events that record just added
        (announced to whoever waits on the run)."""

    def forget(self, run_id: str) -> None:
        """The run's actor stopped: readers go to the stored history."""


class Ports(Protocol):
    history: HistoryPort
    tasks: TaskPort
    timers: TimerPort
    outbox: OutboxPort
    clock: Clock
    workers: WorkerLiveness
    state: StatePort
    flow: FlowPort
    # The largest encoded history record (and task) the server takes.
    max_record_bytes: int

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
        """Append one record (``events``, encoded as ``body``), publish its tasks and arm its
        timers, all concurrently; the record's sequence (raises WrongLastSequence, after the
        tasks and timers went out: a decision that did not happen dispatches at most a
        task that runs for nothing and a timer whose fire is ignored)."""
