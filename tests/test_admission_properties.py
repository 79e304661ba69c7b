"""Flow control's side of a run over random limited runs: every slot taken and every queue place
is given back once, the state knows what it holds and queues for (so does the reaper), nothing
limited starts unadmitted, and concurrency.max_steps holds."""

from __future__ import annotations

from admission_support import appended, of, tasks
from hypothesis import given, settings
from hypothesis import strategies as st

from dagnats.domain import events as ev
from dagnats.domain import state as rs
from dagnats.domain.actions import Acquire, EnqueueTask, Release, StartTimer
from dagnats.domain.fold import fold, replay
from dagnats.domain.kinds.admission import slot_holders
from dagnats.domain.limits import SLOTS, holder_id, run_limits, slot_keys, step_limits
from dagnats.domain.timers import LIMIT

from strategies import AdmittedRun, admitted_runs

Entry = tuple[str, str]  # (pool key, holder)


def entries_in(run: rs.WorkflowRun) -> tuple[set[Entry], set[Entry]]:
    """What the state says the run has in slot pools: (held, queued). Nothing once it ended; a
    pending run queues in runs.<workflow>; a held attempt (its step's next one) holds what its
    answer granted and queues in the rest of its step's pools; a queued or running attempt
    holds what its admission granted; a map's instances count only while the map is under way."""
    held: set[Entry] = set()
    queued: set[Entry] = set()
    if run.is_terminal or run.definition is None:
        return held, queued
    defn = run.definition
    held |= {(key, run.run_id) for key in run.holds}
    if run.status == rs.RunStatus.PENDING:
        queued |= {(r.key, run.run_id) for r in run_limits(defn, run.input, 0) if r.key not in run.holds}
    for step_id, state in run.steps.items():
        attempts = [(None, state)]
        if state.status in rs.HOLDING_STEP_STATUSES:
            attempts += list(enumerate(state.instances))
        for index, attempt in attempts:
            waiting = attempt.status == rs.StepStatus.WAITING
            owner = holder_id(run.run_id, step_id, attempt.attempts + waiting, index)
            held |= {(key, owner) for key in attempt.holds}
            if waiting:
                queued |= {(key, owner) for key in slot_keys(defn, defn.step(step_id)) if key not in attempt.holds}
    return held, queued


def answered(fact: ev.Event) -> tuple[str, tuple[str, ...]] | None:
    """(holder, slots granted) of an admission answer."""
    if isinstance(fact, (ev.RunAdmitted, ev.RunLimited)):
        return fact.run_id, fact.payload.holds
    if isinstance(fact, (ev.StepAdmitted, ev.StepLimited)):
        return holder_id(fact.run_id, fact.step_id, fact.attempt, fact.instance), fact.payload.holds
    return None


@settings(max_examples=300)
@given(admitted_runs())
def test_every_slot_and_queue_place_taken_is_given_back_once_and_the_state_knows_them(recorded: AdmittedRun):
    held: set[Entry] = set()  # what flow control has of this run, by the answers the run recorded
    queued: set[Entry] = set()
    for fact, before, after, actions in recorded.steps:
        answer = answered(fact)
        if answer is not None and after is not before:
            owner, granted = answer
            mine = {entry for entry in held | queued if entry[1] == owner}
            held = (held - mine) | {(key, owner) for key in granted}
            queued = (queued - mine) | {entry for entry in mine if entry[0] not in granted}
        for acquire in of(actions, Acquire):  # the shell asks at once: the holder queues (or holds)
            queued |= {(r.key, acquire.holder) for r in acquire.requests if r.kind == SLOTS} - held
        for release in of(actions, Release):
            entry = (release.key, release.holder)
            assert entry in held | queued, f"released what was neither held nor queued, after {fact.type}"
            held.discard(entry)
            queued.discard(entry)
        assert (held, queued) == entries_in(after), f"after {fact.type}"
    if recorded.final.is_terminal:
        assert held | queued == set()


@settings(max_examples=300)
@given(admitted_runs())
def test_the_reaper_never_frees_what_a_run_holds_or_queues_for_and_frees_what_it_released(recorded: AdmittedRun):
    for fact, _before, after, actions in recorded.steps:
        held, queued = entries_in(after)
        legit = slot_holders(after)
        assert {owner for _, owner in held | queued} <= legit, f"after {fact.type}"
        for release in of(actions, Release):
            if not any(owner == release.holder for _, owner in held | queued):
                assert release.holder not in legit, f"after {fact.type}"


@settings(max_examples=300)
@given(admitted_runs())
def test_max_steps_is_never_exceeded(recorded: AdmittedRun):
    concurrency = recorded.definition.concurrency
    cap = concurrency.max_steps if concurrency is not None else 0
    under_way = rs.HOLDING_STEP_STATUSES | {rs.StepStatus.RETRYING, rs.StepStatus.CONTINUING}
    for fact, _before, after, _actions in recorded.steps:
        busy = [s for s, state in after.steps.items() if state.status in under_way]
        assert not cap or len(busy) <= cap, f"after {fact.type}: {busy}"


@settings(max_examples=200)
@given(admitted_runs())
def test_no_limited_attempt_is_queued_without_its_admission(recorded: AdmittedRun):
    let_in: set[tuple[str, int]] = set()
    for fact, before, after, actions in recorded.steps:
        if isinstance(fact, ev.StepAdmitted) and after is not before:
            let_in.add((fact.step_id, fact.attempt))
        for task in of(actions, EnqueueTask):
            step = recorded.definition.step(task.payload.step_id)
            if step_limits(recorded.definition, step, None, 0):
                assert (step.id, task.payload.attempt) in let_in


@settings(max_examples=200)
@given(admitted_runs())
def test_a_run_under_max_runs_queues_nothing_before_it_is_admitted(recorded: AdmittedRun):
    for _fact, before, after, actions in recorded.steps:
        if before.status == rs.RunStatus.PENDING and after.status == rs.RunStatus.PENDING:
            assert tasks(actions) == [] and appended(actions, ev.StepHeld) == []


@settings(max_examples=200)
@given(admitted_runs())
def test_every_limit_timer_asks_again_for_the_attempt_it_was_armed_for(recorded: AdmittedRun):
    for fact, _before, after, actions in recorded.steps:
        if isinstance(fact, ev.TimerFired) and fact.payload.kind == LIMIT:
            for acquire in of(actions, Acquire):
                assert (acquire.step_id, acquire.attempt) == (fact.payload.step_id, fact.payload.attempt)
        for armed in of(actions, StartTimer):
            if armed.kind == LIMIT and armed.step_id:
                state = after.step(armed.step_id)
                assert state.status == rs.StepStatus.WAITING and armed.attempt == state.attempts + 1


@settings(max_examples=200)
@given(admitted_runs(), st.data())
def test_an_admission_history_replays_to_the_same_state_even_with_duplicates(recorded: AdmittedRun, data):
    assert replay(recorded.history) == recorded.final
    history = list(recorded.history)
    for original in data.draw(st.lists(st.integers(0, len(history) - 1), max_size=6)):
        answer = isinstance(history[original], (ev.StepLimited, ev.RunLimited))
        # A limited answer is re-delivered right after itself: a late, older one is a known gap
        # (test_an_older_limited_answer_delivered_late_changes_nothing).
        at_index = original + 1 if answer else data.draw(st.integers(original + 1, len(history)))
        history.insert(at_index, history[original])
    assert replay(history) == recorded.final
    assert fold(recorded.final, recorded.history[-1]) is recorded.final
