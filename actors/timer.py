"""TimerActor: fires ``timer.fired`` facts into runs when their timers fall due.

Timers are durable because the run's history holds them: a retry's due
time and an attempt's start are folded state, so rebuilding a run re-arms
every timer it waits on (``domain.timers.wanted_timers``). This actor keeps
the in-process schedule, arms each (run, timer) once, forgets a timer the
run no longer waits on (``DisarmTimer``: its fire is dropped), and hands due
timers to the directory as ordinary facts; ``decide`` ignores a fire that no
longer matches the run (a duplicate, or a step that moved on).
"""

from __future__ import annotations

import threading
from typing import Any

import pykka

from dagnats.domain.events import TimerFire, TimerFired, format_timestamp, parse_timestamp

from .messages import ArmTimer, Deliver, DisarmTimer, TimerDue
from .ports import Clock, WorkerLiveness


class TimerActor(pykka.ThreadingActor):
    use_daemon_thread = True

    def __init__(self, clock: Clock, workers: WorkerLiveness | None = None) -> None:
        super().__init__()
        self.clock, self.workers = clock, workers
        self.directory: Any = None
        self.armed: dict[tuple[str, str], str] = {}  # (run, timer id) -> due

    def on_start(self) -> None:
        threading.current_thread().name = "TimerActor"

    def attach(self, directory: Any) -> None:
        self.directory = directory

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, ArmTimer):
            self._arm(message)
        elif isinstance(message, DisarmTimer):
            self.armed.pop((message.run_id, message.timer_id), None)
        elif isinstance(message, TimerDue):
            self._fire(message)
        return None

    def pending(self) -> int:
        """How many timers are armed (for tests and status)."""
        return len(self.armed)

    def _arm(self, message: ArmTimer) -> None:
        key = (message.run_id, message.timer.timer_id)
        if self.armed.get(key) == message.timer.due:
            return
        self.armed[key] = message.timer.due
        delay = (parse_timestamp(message.timer.due) - self.clock.now()).total_seconds()
        ref = self.actor_ref
        due = TimerDue(message.run_id, message.timer, message.trace_parent)
        self.clock.call_later(max(0.0, delay), lambda: ref.tell(due))

    def _fire(self, message: TimerDue) -> None:
        timer = message.timer
        key = (message.run_id, timer.timer_id)
        if self.armed.get(key) != timer.due:
            return  # disarmed, or re-armed for another time
        del self.armed[key]
        fire = TimerFire(timer_id=timer.timer_id, kind=timer.kind, step_id=timer.step_id, attempt=timer.attempt,
                         due=timer.due)
        if timer.worker_id:
            # The fact says what the shell saw, so deciding on it stays pure.
            alive = self.workers.alive(timer.worker_id) if self.workers else True
            fire = TimerFire(timer_id=timer.timer_id, kind=timer.kind, step_id=timer.step_id,
                             attempt=timer.attempt, worker_id=timer.worker_id, worker_alive=alive, due=timer.due)
        event = TimerFired(
            run_id=message.run_id,
            timestamp=format_timestamp(self.clock.now()),
            payload=fire,
            trace_parent=message.trace_parent,
            # One fact per arming: a timer re-armed after it fired (a sticky check) fires anew.
            id=f"timer.{timer.timer_id}.{timer.due}",
        )
        if self.directory is not None:
            self.directory.tell(Deliver(message.run_id, (event,)))
