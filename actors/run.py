"""RunActor: one live workflow run, rebuilt by folding its history.

Theory of operation: on start the actor loads the run's snapshot plus the
history after it, then calls ``recover`` so whatever the run waits on
(queued tasks, timers) is asked for again — publishes are deduplicated by
deterministic ids, so this is harmless when nothing was lost. For each
delivery it folds and decides every fact (skipping facts that change
nothing), appends the facts and decisions as ONE history record with the
expected last sequence, then publishes tasks and arms timers, and only then
lets the shell acknowledge the inbox messages. A failed expectation means
another writer moved the history: the actor refolds the tail and decides
again from the new state.

The record and the tasks it dispatches are published together, not one
after the other: a task whose record then fails (a conflict) is dispatched
again, under the same message id, by the decision taken after refolding —
or, if that decision differs, runs once for nothing (at-least-once).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import pykka

from dagnats.domain.actions import Action, AppendEvent, EnqueueTask, StartTimer
from dagnats.domain.decide import evolve, recover
from dagnats.domain.events import Event
from dagnats.domain.fold import fold
from dagnats.domain.state import WorkflowRun, new_run

from .messages import ArmTimer, Crashed, Deliver, Healthy, Passivate, Passivated, Recover
from .ports import Ports, WrongLastSequence

log = logging.getLogger("dagnats.run")
MAX_CONFLICT_RETRIES = 8


class RunActor(pykka.ThreadingActor):
    use_daemon_thread = True

    def __init__(self, run_id: str, ports: Ports, directory: Any, timers: Any, live: dict,
                 fresh: bool = False, recovering: bool = False) -> None:
        super().__init__()
        self.run_id, self.fresh, self.recovering = run_id, fresh, recovering
        self.ports, self.directory, self.timers, self.live = ports, directory, timers, live
        self.run: WorkflowRun = new_run(run_id)
        self.last_seq = 0

    # ---- lifecycle -------------------------------------------------------------

    def on_start(self) -> None:
        threading.current_thread().name = f"RunActor-{self.run_id}"
        if self.fresh:
            # A start request: skip the reads. Were the run not new after all (a
            # redelivered start), the append expecting an empty history fails and
            # the actor refolds what is there.
            return
        loaded, self.last_seq = self.ports.history.load(self.run_id)
        if loaded is not None:
            self.run = loaded
            self._publish_state()
            self._reissue()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Deliver):
            self._deliver(message)
        elif isinstance(message, Recover):
            pass  # on_start already re-issued what the run waits on
        elif isinstance(message, Passivate):
            self._passivate()
        return None

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        log.error("run %s: actor crashed: %s", self.run_id, exception_value)
        self.live.pop(self.run_id, None)
        self._redeliver_pending()
        self.directory.tell(Crashed(self.run_id, repr(exception_value)))

    # ---- deliveries ---------------------------------------------------------------

    def _deliver(self, message: Deliver) -> None:
        try:
            self._handle(list(message.events))
        except BaseException:
            message.done(False)
            raise
        message.done(True)
        if self.recovering:
            self.recovering = False
            self.directory.tell(Healthy(self.run_id))

    def _handle(self, facts: list[Event]) -> None:
        for _ in range(MAX_CONFLICT_RETRIES):
            now = self.ports.clock.now()
            run, record, actions = self.run, [], []
            for fact in facts:
                updated, decided = evolve(run, fact, now)
                if updated is run and not decided:
                    continue
                record.append(fact)
                record.extend(a.event for a in decided if isinstance(a, AppendEvent))
                actions.extend(decided)
                run = updated
            if not record:
                return
            tasks = [a for a in actions if isinstance(a, EnqueueTask)]
            try:
                seq = self.ports.record(self.run_id, record, self.last_seq, f"{self.run_id}.{record[0].id}", tasks)
            except WrongLastSequence as conflict:
                log.info("run %s: history moved past %d; refolding", self.run_id, self.last_seq)
                if not self._refold() and conflict.duplicate:
                    # Nothing new, yet the id is taken: these facts were recorded long ago.
                    log.warning("run %s: dropping facts already recorded under %s", self.run_id, record[0].id)
                    return
                continue
            first_record = self.last_seq == 0
            self.run, self.last_seq = run, seq
            self._arm(actions)
            self._publish_state()
            self._after_append(first_record)
            return
        raise RuntimeError(f"run {self.run_id}: gave up after {MAX_CONFLICT_RETRIES} conflicting appends")

    def _refold(self, reissue: bool = True) -> int:
        """Fold the records appended since ``last_seq``; how many there were."""
        records = self.ports.history.read_after(self.run_id, self.last_seq)
        for seq, events in records:
            for event in events:
                self.run = fold(self.run, event)
            self.last_seq = seq
        if reissue:
            self._reissue()
        return len(records)

    def _reissue(self) -> None:
        """Append what ``recover`` decides and re-publish what the run waits on."""
        actions = recover(self.run, self.ports.clock.now())
        decisions = [a.event for a in actions if isinstance(a, AppendEvent)]
        if decisions:
            try:
                seq = self.ports.history.append(self.run_id, decisions, self.last_seq, f"{self.run_id}.{decisions[0].id}")
            except WrongLastSequence:
                self._refold(reissue=False)  # the next delivery decides from the new state
                return
            for event in decisions:
                self.run = fold(self.run, event)
            self.last_seq = seq
        self._effects(actions)

    def _effects(self, actions: list[Action]) -> None:
        tasks = [a for a in actions if isinstance(a, EnqueueTask)]
        if tasks:
            self.ports.tasks.enqueue(tasks)
        self._arm(actions)

    def _arm(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, StartTimer):
                self.timers.tell(ArmTimer(self.run_id, action, self.run.trace_parent))

    def _after_append(self, first_record: bool) -> None:
        if self.run.is_terminal:
            # Not awaited: the history already holds the outcome; the snapshot is a cache.
            self.ports.history.save_snapshot(self.run, self.last_seq, wait=False)
            self.directory.tell(Passivate(self.run_id))
        elif first_record:
            # The snapshot index lists every run; written once at start, not per step.
            self.ports.history.save_snapshot(self.run, self.last_seq, wait=False)

    # ---- passivation -----------------------------------------------------------------

    def _passivate(self) -> None:
        if not self.run.is_terminal and self.last_seq:
            self.ports.history.save_snapshot(self.run, self.last_seq, wait=True)
        self.live.pop(self.run_id, None)
        self.directory.tell(Passivated(self.run_id))
        self.stop()

    def _publish_state(self) -> None:
        # Readers (the API) take the latest frozen state without asking the actor.
        self.live[self.run_id] = (self.run, self.last_seq)

    def _redeliver_pending(self) -> None:
        inbox = self.actor_inbox
        while not inbox.empty():
            envelope = inbox.get_nowait()
            message = getattr(envelope, "message", None)
            if isinstance(message, Deliver):
                message.done(False)
