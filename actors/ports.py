"""What actors need from the world, as protocols.

Implementations live in ``infra/`` and run on the asyncio loop that owns
the NATS connection; these methods are called from actor threads and block
only the calling actor until the loop has done the work.
"""

from __future__ import annotations

from datetime import datetime
from typing import Callable, Protocol

from dagnats.domain.actions import EnqueueTask
from dagnats.domain.events import Event
from dagnats.domain.state import WorkflowRun


class WrongLastSequence(Exception):
    """Someone else appended to the run's history: refold and decide again.

    ``duplicate``: the store already holds a record under this message id.
    """

    def __init__(self, message: str, duplicate: bool = False) -> None:
        super().__init__(message)
        self.duplicate = duplicate


class HistoryPort(Protocol):
    def load(self, run_id: str) -> tuple[WorkflowRun | None, int]:
        """Snapshot plus the history after it: (state or None, last sequence)."""

    def read_after(self, run_id: str, after_seq: int) -> list[tuple[int, list[Event]]]:
        """Records of the run's history after ``after_seq``, with their sequences."""

    def append(self, run_id: str, events: list[Event], expected_seq: int, msg_id: str) -> int:
        """Append one record; returns its sequence or raises WrongLastSequence."""

    def save_snapshot(self, run: WorkflowRun, last_seq: int, wait: bool) -> None:
        """Cache the state in KV (a cache: never ahead of history)."""


class TaskPort(Protocol):
    def enqueue(self, tasks: list[EnqueueTask]) -> None:
        """Publish tasks and wait until each is stored."""


class Clock(Protocol):
    def now(self) -> datetime: ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> None: ...


class WorkerLiveness(Protocol):
    def alive(self, worker_id: str) -> bool:
        """Whether the worker has been heard from in the last few seconds."""


class Ports(Protocol):
    history: HistoryPort
    tasks: TaskPort
    clock: Clock
    workers: WorkerLiveness

    def record(self, run_id: str, events: list[Event], expected_seq: int, msg_id: str,
               tasks: list[EnqueueTask]) -> int:
        """Append one record and publish its tasks concurrently; the record's sequence
        (raises WrongLastSequence, after the tasks went out)."""
