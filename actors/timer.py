"""TimerActor: cancels timers and fires short ones on time.

Every timer is durable without this actor: the record that decides it also
stores its NATS message schedule (``ports.timers``), which fires the run's
``timer.fired`` fact into its inbox when due, across any restart. This actor
holds no timer only in memory; it does two things the schedules cannot:

- the server fires a schedule a quarter of a second after it is due at the
  earliest, so a timer due within ``SHORT_TIMER`` is also fired from memory,
  on time; the schedule's later copy of the same fact is ignored by ``decide``;
- a timer the run no longer waits on (``DisarmTimer``) is dropped from memory
  and its schedule purged.
"""

from __future__ import annotations

import threading
from typing import Any

from dagnats.domain.events import parse_timestamp
from dagnats.domain.timers import fired_event

from .messages import ArmTimer, DisarmTimer, TimerDue
from .ports import Clock, TimerPort
from .threads import LeanActor

SHORT_TIMER = 1.0  # seconds: timers due sooner also fire from memory


class TimerActor(LeanActor):
    use_daemon_thread = True

    def __init__(self, clock: Clock, timers: TimerPort) -> None:
        super().__init__()
        self.clock, self.timers = clock, timers
        self.armed: dict[tuple[str, str], str] = {}  # (run, timer id) -> due, fast path only

    def on_start(self) -> None:
        threading.current_thread().name = "TimerActor"

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, ArmTimer):
            self._arm(message)
        elif isinstance(message, DisarmTimer):
            self.armed.pop((message.run_id, message.timer_id), None)
            self.timers.cancel(message.run_id, [message.timer_id])
        elif isinstance(message, TimerDue):
            self._fire(message)
        return None

    def pending(self) -> int:
        """How many short timers wait in memory."""
        return len(self.armed)

    def _arm(self, message: ArmTimer) -> None:
        delay = (parse_timestamp(message.timer.due) - self.clock.now()).total_seconds()
        if delay >= SHORT_TIMER:
            return  # its schedule fires it
        self.armed[(message.run_id, message.timer.timer_id)] = message.timer.due
        ref, due = self.actor_ref, TimerDue(message.run_id, message.timer, message.trace_parent)
        self.clock.call_later(max(0.0, delay), lambda: ref.tell(due))

    def _fire(self, message: TimerDue) -> None:
        key = (message.run_id, message.timer.timer_id)
        if self.armed.get(key) != message.timer.due:
            return  # disarmed, or re-armed for another time
        del self.armed[key]
        self.timers.fire(fired_event(message.run_id, message.timer, message.trace_parent))
