"""RunActor: one live workflow run, rebuilt by folding its history.

Theory of operation: on start the actor loads the run's snapshot plus the
history after it, then calls ``recover`` so whatever the run waits on
(queued tasks, timers) is asked for again — publishes are deduplicated by
deterministic ids, so this is harmless when nothing was lost. For each
delivery it folds and decides every fact, appends the facts and their
decisions as ONE history record with the expected last sequence, then
publishes tasks, arms and cancels timers, publishes its state for readers,
and only then lets the shell acknowledge the inbox messages. A failed
expectation means another writer moved the history: the actor refolds the
tail and decides again from the new state.

Compute, one conditional write, adopt: ``_plan`` computes the records and
their effects from the current state without touching anything; ``_write``
appends them; only an append that succeeded changes ``self.run``.

A fact that changes nothing and leads to no decision (a liveness check
that found the worker alive) is not recorded — once the actor has checked
that its state is current (another engine may have moved the history); the
timer it re-arms still is armed. A record never exceeds the server's max payload:
facts go into several records when one would be too large, and a fact too
large to record at all is replaced (an output too large to keep fails its
step) or dropped with an error in the log — it never blocks the run's other
facts.

The record and the tasks it dispatches are published together, not one
after the other: a task whose record then fails (a conflict) is dispatched
again, under the same message id, by the decision taken after refolding —
or, if that decision differs, runs once for nothing (at-least-once).
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from typing import Any

import msgspec

from dagnats.domain.actions import (
    Acquire,
    Action,
    AppendEvent,
    CancelTimer,
    DeadLetter,
    DiscardDeadLetters,
    DropTask,
    EnqueueTask,
    PublishFact,
    PublishMessage,
    RegisterWaiter,
    Release,
    RemoveWaiter,
    StartChildRun,
    StartTimer,
)
from dagnats.domain.decide import evolve, recover, unrecordable
from dagnats.domain.errors import Unavailable, WrongLastSequence
from dagnats.domain.events import (
    Event,
    StepCompleted,
    StepFailed,
    TimerFired,
    encode_event,
    parse_timestamp,
)
from dagnats.domain.fold import ahead_of, fold
from dagnats.domain.kinds.admission import answer_fact
from dagnats.domain.kinds.sleep import asleep_until
from dagnats.domain.run_context import run_context
from dagnats.domain.state import WorkflowRun, new_run

from .messages import ArmTimer, Crashed, Deliver, DisarmTimer, Healthy, Index, Passivate, Passivated, Rebuild
from .plan import Plan, Record, repeated_start
from .ports import Ports
from .threads import PooledActor

log = logging.getLogger("dagnats.run")
MAX_CONFLICT_RETRIES = 8
# A worker's report that arrives before the record dispatching its attempt (recorded by
# another engine) comes back this much later, for up to EARLY_FOR seconds.
EARLY_RETRY = 0.5
EARLY_FOR = 60.0
# A delivery handed back because NATS did not answer comes again this much later.
UNAVAILABLE_RETRY = 1.0
# A run that only sleeps for this long or longer passivates (a shorter sleep keeps its actor).
ASLEEP_PASSIVATE = 30.0
# A worker's result for its attempt.
RESULTS = (StepCompleted, StepFailed)
OUTBOX_ACTIONS = (
    PublishMessage,
    RegisterWaiter,
    RemoveWaiter,
    StartChildRun,
    PublishFact,
    DeadLetter,
    DiscardDeadLetters,
)


class RunActor(PooledActor):
    def __init__(
        self, run_id: str, ports: Ports, directory: Any, timers: Any, fresh: bool = False, recovering: bool = False
    ) -> None:
        super().__init__()
        self.run_id, self.fresh, self.recovering = run_id, fresh, recovering
        self.ports, self.directory, self.timers = ports, directory, timers
        self.run: WorkflowRun = new_run(run_id)
        self.last_seq = 0
        self.loaded = fresh
        self.crashed = False
        # Whether the run may be in the snapshot index of unfinished runs: not if this
        # actor created it and has not listed it (see RunDirectory._index_later).
        self.listed = not fresh

    # ---- lifecycle -------------------------------------------------------------

    def on_start(self) -> None:
        threading.current_thread().name = f"RunActor-{self.run_id}"

    def on_receive(self, message: Any) -> Any:
        with run_context(self.run_id, *self._about(message)):
            return self._receive(message)

    def _about(self, message: Any) -> tuple[str, str]:
        """(step_id, trace_parent) for the log lines of handling ``message``."""
        events = message.events if isinstance(message, Deliver) else ()
        steps = {event.step_id for event in events}
        step_id = steps.pop() if len(steps) == 1 else ""
        return step_id, self.run.trace_parent or next((e.trace_parent for e in events if e.trace_parent), "")

    def _receive(self, message: Any) -> Any:
        if self.crashed:
            # Crashed, stopping: what was queued behind the failure goes back to the
            # directory, which has dropped this actor and starts a fresh one.
            if isinstance(message, Deliver):
                self.directory.tell(message)
            return None
        try:
            self._load()
            if isinstance(message, Deliver):
                self._deliver(message)
            elif isinstance(message, Index):
                if not self.run.is_terminal and self.last_seq:
                    self.ports.history.save_snapshot(self.run, self.last_seq, wait=message.wait)
                    self.listed = True
            elif isinstance(message, Passivate):
                self._passivate(message.snapshot)
            elif isinstance(message, Rebuild):
                self._rebuilt()
        except Exception as err:  # noqa: BLE001 - supervised: the directory rebuilds the run from history
            self._crash(err)  # the directory hears of the crash before the delivery goes back
            if isinstance(message, Deliver) and isinstance(err, Unavailable):
                message.done(False, UNAVAILABLE_RETRY)
            elif isinstance(message, Deliver):
                message.done(False)
        return None

    def _load(self) -> None:
        """Rebuild from snapshot + history and re-issue what the run waits on (once).

        A fresh actor (a start request) skips the reads: were the run not new after
        all (a redelivered start), the append expecting an empty history fails and
        the actor refolds what is there.
        """
        if self.loaded:
            return
        loaded, self.last_seq = self.ports.history.load(self.run_id)
        self.loaded = True
        if loaded is not None:
            self.run = loaded
            self.ports.state.publish(self.run, self.last_seq, [])
            self._take_up()

    def _crash(self, err: Exception) -> None:
        """Stop, to be rebuilt from the history (what was written may not be what this
        actor holds: an append whose answer was lost may have been stored)."""
        unavailable = isinstance(err, Unavailable)
        if unavailable:
            log.warning("run %s: %s; rebuilding it from its history", self.run_id, err)
        else:
            log.error("run %s: actor crashed: %s", self.run_id, err, exc_info=err)
        self.crashed = True
        self.ports.state.forget(self.run_id)
        self.directory.tell(Crashed(self.run_id, repr(err), unavailable))
        self.stop()  # queued behind what is already in the inbox, which goes back first (after Crashed)

    # ---- deliveries ---------------------------------------------------------------

    def _deliver(self, message: Deliver) -> None:
        plan = self._handle(list(message.events))
        if plan.early:
            message.done(False, EARLY_RETRY)
        elif repeated_start(message, plan):
            message.done(True, repeated=True)
        else:
            message.done(True)
        if self.recovering:
            self.recovering = False
            self.directory.tell(Healthy(self.run_id))
        if self.run.is_terminal or self._asleep():
            self.directory.tell(Passivate(self.run_id))

    def _rebuilt(self) -> None:
        """Loaded (``_load`` re-issued what the run waits on) after an outage crashed the
        actor before: healthy again, and passivated at once if it has nothing to do."""
        if self.recovering:
            self.recovering = False
            self.directory.tell(Healthy(self.run_id))
        if self.run.is_terminal or self._asleep() or not self.last_seq:
            self.directory.tell(Passivate(self.run_id))

    def _asleep(self) -> bool:
        """A run that only sleeps, for ``ASLEEP_PASSIVATE`` seconds or more: it holds no
        actor (no thread) meanwhile; the fire of its durable timer rebuilds it."""
        due = asleep_until(self.run)
        return due is not None and (parse_timestamp(due) - self.ports.clock.now()).total_seconds() >= ASLEEP_PASSIVATE

    def _handle(self, facts: list[Event]) -> Plan:
        facts = [self._observed(fact) for fact in facts]
        for _ in range(MAX_CONFLICT_RETRIES):
            plan = self._plan(facts)
            if not plan.records and self._refold(reissue=False):
                # Nothing to record here, but another engine moved the history: a fact that
                # changes nothing in a stale state may well change the run as recorded.
                continue
            if self._write(plan):
                if not plan.records and not plan.early and any(isinstance(f, RESULTS) for f in facts):
                    # A result recorded before, delivered again: the engine that recorded it
                    # may have been killed before it published what that record dispatched
                    # (its delivery then comes back). What the run waits on goes out again,
                    # under the same message ids.
                    self._reissue()
                return plan
        raise RuntimeError(f"run {self.run_id}: gave up after {MAX_CONFLICT_RETRIES} conflicting appends")

    def _early(self, run: WorkflowRun, fact: Event, now: datetime) -> bool:
        """Whether a worker reported on an attempt whose dispatch is not in ``run`` (the state
        the report folds into): the delivery goes back to the inbox to come again (the facts
        already recorded then change nothing). The state after the whole delivery would not
        do: a fact later in the same delivery may dispatch the attempt, and the report, folded
        before it, is dropped. Reports older than ``EARLY_FOR`` are no longer waited for."""
        return ahead_of(run, fact) and (now - parse_timestamp(fact.timestamp)).total_seconds() < EARLY_FOR

    def _observed(self, fact: Event) -> Event:
        """A liveness check says whether its worker is alive as the shell sees it now,
        so deciding on it stays pure."""
        if isinstance(fact, TimerFired) and fact.payload.worker_id:
            alive = self.ports.workers.alive(fact.payload.worker_id)
            return msgspec.structs.replace(fact, payload=msgspec.structs.replace(fact.payload, worker_alive=alive))
        return fact

    def _plan(self, facts: list[Event]) -> Plan:
        """Compute the records ``facts`` lead to from the current state; touches nothing."""
        now, limit = self.ports.clock.now(), self.ports.max_record_bytes
        plan, run = Plan(), self.run
        for fact in facts:
            plan.early = plan.early or self._early(run, fact, now)
            record = self._evolve(run, fact, now)
            if record is None:
                continue
            if record.size > limit:
                record = self._instead_of_too_large(run, fact, record, now)
                if record is None:
                    continue
            if not record.events:
                plan.loose += record.actions
                continue
            last = plan.records[-1] if plan.records else None
            if last is not None and last.size + record.size <= limit:
                last.events += record.events
                last.parts += record.parts
                last.actions += record.actions
                last.run = record.run
            else:
                plan.records.append(record)
            run = record.run
        return plan

    def _evolve(self, run: WorkflowRun, fact: Event, now: Any) -> Record | None:
        updated, decided = evolve(run, fact, now, self.ports.max_record_bytes)
        updated, decided = self._admit(updated, decided, now)
        appended = [a.event for a in decided if isinstance(a, AppendEvent)]
        if updated is run and not appended and not any(isinstance(a, EnqueueTask) for a in decided):
            # Nothing to record: at most a timer to arm again (a liveness check that passed).
            return Record([], [], decided, run) if decided else None
        events = [fact, *appended]
        return Record(events, [encode_event(e) for e in events], decided, updated)

    def _admit(self, run: WorkflowRun, actions: list[Action], now: Any) -> tuple[WorkflowRun, list[Action]]:
        """Ask flow control what each ``Acquire`` asks, now: its answer is a fact recorded with
        the decision that asked (``step.admitted`` / ``step.limited``), so a rebuilt run
        knows what it holds and what it waits for."""
        if not any(isinstance(a, Acquire) for a in actions):
            return run, actions
        done: list[Action] = []
        pending = list(actions)
        while pending:
            action = pending.pop(0)
            if not isinstance(action, Acquire):
                done.append(action)
                continue
            fact = answer_fact(action, self.ports.flow.acquire(action), now)
            updated, more = evolve(run, fact, now, self.ports.max_record_bytes)
            if updated is run and not more:
                continue  # the step moved on meanwhile: nothing to record
            run = updated
            done.append(AppendEvent(fact))
            pending[0:0] = more
        return run, done

    def _instead_of_too_large(self, run: WorkflowRun, fact: Event, record: Record, now: Any) -> Record | None:
        limit = self.ports.max_record_bytes
        substitute = unrecordable(fact, record.size, limit)
        replaced = self._evolve(run, substitute, now) if substitute is not None else None
        if replaced is None or replaced.size > limit:
            log.error(
                "run %s: dropping %s %s: its record would be %d bytes, over the limit of %d",
                self.run_id,
                fact.type,
                fact.id,
                record.size,
                limit,
            )
            return None
        log.warning(
            "run %s: %s %s is too large to record (%d bytes); recorded %s instead",
            self.run_id,
            fact.type,
            fact.id,
            record.size,
            replaced.events[0].type,
        )
        return replaced

    def _write(self, plan: Plan) -> bool:
        """Append the planned records in order; False if the history moved (plan again)."""
        for record in plan.records:
            tasks = [a for a in record.actions if isinstance(a, EnqueueTask)]
            timers = [a for a in record.actions if isinstance(a, StartTimer)]
            msg_id = f"{self.run_id}.{record.events[0].id}"
            try:
                seq = self.ports.record(
                    self.run_id,
                    record.events,
                    record.body(),
                    self.last_seq,
                    msg_id,
                    tasks,
                    timers,
                    record.run.trace_parent,
                )
            except WrongLastSequence as conflict:
                self.listed = True  # the run was there before this actor: it may be listed
                log.info("run %s: history moved past %d; refolding", self.run_id, self.last_seq)
                if not self._catch_up() and conflict.duplicate:
                    # Nothing new, yet the id is taken: these facts were recorded long ago.
                    log.warning("run %s: dropping facts already recorded under %s", self.run_id, msg_id)
                    return True
                return False
            self._adopt(record, seq)
        loose_timers = [a for a in plan.loose if isinstance(a, StartTimer)]
        if loose_timers:  # the next liveness check: armed as durably as any other timer
            self.ports.timers.arm(self.run_id, loose_timers, self.run.trace_parent)
        self._effects(plan.loose)
        return True

    def _adopt(self, record: Record, seq: int) -> None:
        # A run that a replay reopened is listed in the snapshot index as unfinished
        # again at once. A new run is listed by the directory's ``Index`` if it is still
        # live ``INDEX_AFTER`` after its start, or by its passivation snapshot: one that
        # ends sooner writes one snapshot, its last.
        reopened = self.last_seq != 0 and self.run.is_terminal and not record.run.is_terminal
        self.run, self.last_seq = record.run, seq
        self._effects(record.actions)
        if self.run.is_terminal or reopened:
            # Not awaited: the history already holds the outcome; the snapshot is a cache.
            # On its way before the end is announced: a delete of the ended run (its store
            # waits for the snapshots under way) is never overtaken by it.
            self.ports.history.save_snapshot(self.run, self.last_seq, wait=False, listed=self.listed)
            self.listed = self.listed or reopened
        self.ports.state.publish(self.run, seq, record.events)

    def _catch_up(self) -> int:
        """Refold after a failed expectation; how many records there were.

        No re-issue: whoever moved the history dispatched what it decided, and a re-issue
        racing its worker (task acked, result not yet read) runs it twice. Unless this
        actor took the run for new (nothing folded yet): then the history is one it has
        never seen — typically its own start, redelivered because the actor before it
        crashed on an append that was stored after all (the answer lost in a server
        restart), its tasks perhaps never published and the run not listed as unfinished.
        It adopts that history as a rebuilt run does.
        """
        if self.last_seq:
            return self._refold(reissue=False)
        found = self._refold(reissue=False)
        if found:
            self._take_up()
        return found

    def _take_up(self) -> None:
        """Carry on with a run rebuilt from its history: re-issue what it waits on and set
        its place in the snapshot index now. Unfinished, it is listed (a new run is listed a
        second after its start, by the directory: an actor that crashed or was killed before
        may not have). Ended, its open key is taken out: an engine letting go of the run's
        partition may have listed it as its end was recorded elsewhere, and every takeover
        would bring it up again."""
        self._reissue()
        self.listed = True
        self.ports.history.save_snapshot(self.run, self.last_seq, wait=False)

    def _refold(self, reissue: bool = True) -> int:
        """Fold the records appended since ``last_seq``; how many there were."""
        records = self.ports.history.read_after(self.run_id, self.last_seq)
        for seq, events in records:
            for event in events:
                self.run = fold(self.run, event)
            self.last_seq = seq
        if records:
            self.ports.state.publish(self.run, self.last_seq, [e for _, events in records for e in events])
        if reissue:
            self._reissue()
        return len(records)

    def _reissue(self) -> None:
        """Append what ``recover`` decides and re-publish what the run waits on."""
        now = self.ports.clock.now()
        actions = recover(self.run, now, self.ports.max_record_bytes)
        run = self.run
        for action in actions:
            if isinstance(action, AppendEvent):
                run = fold(run, action.event)
        run, actions = self._admit(run, actions, now)
        decisions = [a.event for a in actions if isinstance(a, AppendEvent)]
        if decisions:
            body = b"[" + b",".join(encode_event(e) for e in decisions) + b"]"
            try:
                seq = self.ports.history.append(self.run_id, body, self.last_seq, f"{self.run_id}.{decisions[0].id}")
            except WrongLastSequence:
                self._refold(reissue=False)  # the next delivery decides from the new state
                return
            self.run, self.last_seq = run, seq
            self.ports.state.publish(self.run, seq, decisions)
        tasks = [a for a in actions if isinstance(a, EnqueueTask)]
        if tasks:
            self.ports.tasks.enqueue(tasks)
        timers = [a for a in actions if isinstance(a, StartTimer)]
        if timers:
            self.ports.timers.arm(self.run_id, timers, self.run.trace_parent)
        self._effects(actions)

    def _effects(self, actions: list[Action]) -> None:
        """What follows a record besides its tasks and schedules: timers to fire on time or
        cancel, superseded tasks to drop, and what the world outside the run must do."""
        drops = [a for a in actions if isinstance(a, DropTask)]
        if drops:
            self.ports.tasks.drop(drops)
        releases = [a for a in actions if isinstance(a, Release)]
        if releases:
            self.ports.flow.release(releases)
        outgoing: list[Action] = [a for a in actions if isinstance(a, OUTBOX_ACTIONS)]
        if outgoing:
            self.ports.outbox.send(self.run_id, outgoing, self.run.trace_parent)
        for action in actions:
            if isinstance(action, StartTimer):
                self.timers.tell(ArmTimer(self.run_id, action, self.run.trace_parent))
            elif isinstance(action, CancelTimer):
                self.timers.tell(DisarmTimer(self.run_id, action.timer_id))

    # ---- passivation -----------------------------------------------------------------

    def _passivate(self, snapshot: bool = True) -> None:
        if snapshot and not self.run.is_terminal and self.last_seq:
            self.ports.history.save_snapshot(self.run, self.last_seq, wait=True)
        self.ports.state.forget(self.run_id)
        self.directory.tell(Passivated(self.run_id, self.run.is_terminal))
        self.stop()
