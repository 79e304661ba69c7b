"""TimerActor: fires ``timer.fired`` facts into runs when their timers fall due.

Timers are durable because the run's history holds them: a retry's due
time and an attempt's start are folded state, so rebuilding a run re-arms
every timer it waits on (``domain.timers.wanted_timers``). This actor keeps
the in-process schedule, arms each (run, timer) once, and hands due timers
to the directory as ordinary facts; ``decide`` ignores a fire that no
longer matches the run (a duplicate, or a step that moved on).
"""

from __future__ import annotations

import threading
from typing import Any

import pykka

from dagnats.domain.events import TIMER_FIRED, Event, format_timestamp, parse_timestamp

from .messages import ArmTimer, Deliver, TimerDue
from .ports import Clock, WorkerLiveness


class TimerActor(pykka.ThreadingActor):
    use_daemon_thread = True

    def __init__(self, clock: Clock, workers: WorkerLiveness | None = None) -> None:
        super().__init__()
        self.clock, self.workers = clock, workers
        self.directory: Any = None
        self.armed: set[tuple[str, str]] = set()

    def on_start(self) -> None:
        threading.current_thread().name = "TimerActor"

    def attach(self, directory: Any) -> None:
        self.directory = directory

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, ArmTimer):
            self._arm(message)
        elif isinstance(message, TimerDue):
            self._fire(message)
        return None

    def _arm(self, message: ArmTimer) -> None:
        key = (message.run_id, message.timer.timer_id)
        if key in self.armed:
            return
        self.armed.add(key)
        delay = (parse_timestamp(message.timer.due) - self.clock.now()).total_seconds()
        ref = self.actor_ref
        due = TimerDue(message.run_id, message.timer, message.trace_parent)
        self.clock.call_later(max(0.0, delay), lambda: ref.tell(due))

    def _fire(self, message: TimerDue) -> None:
        self.armed.discard((message.run_id, message.timer.timer_id))
        timer = message.timer
        payload = {"timer_id": timer.timer_id, "kind": timer.kind, "step_id": timer.step_id, "attempt": timer.attempt}
        if timer.worker_id:
            # The fact says what the shell saw, so deciding on it stays pure.
            payload["worker_id"] = timer.worker_id
            payload["worker_alive"] = self.workers.alive(timer.worker_id) if self.workers else True
        event = Event(
            type=TIMER_FIRED,
            run_id=message.run_id,
            step_id="",
            timestamp=format_timestamp(self.clock.now()),
            payload=payload,
            trace_parent=message.trace_parent,
            # One fact per arming: a timer re-armed after it fired (a sticky check) fires anew.
            id=f"timer.{timer.timer_id}.{timer.due}",
        )
        if self.directory is not None:
            self.directory.tell(Deliver(message.run_id, (event,)))
