"""Flow control's answers as the facts a run records (``answer_fact``), the wake a release sends
(``wake_fact``), queue places given back when a held step or a pending run ends, a step that
holds its slots while a rate says wait, and who of a run the reaper must leave alone."""

from __future__ import annotations

import pytest
from admission_support import (
    BOTH,
    CONCURRENT,
    MAX_RUNS,
    fire_limit,
    holder,
    mapped,
    ms,
    of,
    start,
    tasks,
    workflow,
)
from admission_support import released as releases

from dagnats.domain import events as ev
from dagnats.domain import state as rs
from dagnats.domain.actions import Acquire, Release, StartTimer
from dagnats.domain.decide import evolve
from dagnats.domain.fold import replay
from dagnats.domain.kinds.admission import (
    Answer,
    answer_fact,
    definition_keys,
    released,
    slot_holders,
    wake_fact,
)
from dagnats.domain.limits import Waiter
from dagnats.domain.timers import LIMIT

from strategies import (
    RUN_ID,
    Recorder,
    admitted,
    at,
    cancelled,
    completed,
    failed,
    limited,
    run_admitted,
    run_limited,
    timer_fired,
)

RATED = {"id": "a", "task": "charge", "max_task_concurrency": 1, "rate_limit": {"limit": 1, "period": "10s"}}


def asked(rec: Recorder) -> Acquire:
    return of(rec.actions, Acquire)[-1]


def answer(rec: Recorder, said: Answer, t: float) -> list:
    """Record flow control's answer to the run's latest request, as the RunActor does."""
    return rec.feed(answer_fact(asked(rec), said, at(t)), at(t))


# ---- answer_fact: each kind of answer ------------------------------------------------------------


def test_a_granted_step_becomes_step_admitted_holding_its_slots():
    rec = start(workflow(BOTH))
    fact = answer_fact(asked(rec), Answer(True, holds=("task.charge", "single.wf.a")), at(2))
    assert isinstance(fact, ev.StepAdmitted)
    assert (fact.run_id, fact.step_id, fact.attempt, fact.instance) == (RUN_ID, "a", 1, None)
    assert (fact.id, fact.timestamp) == ("a.1.step.admitted", ev.format_timestamp(at(2)))
    assert fact.payload == ev.Admission(holds=("task.charge", "single.wf.a"))
    assert tasks(rec.feed(fact, at(2))) == [("a", 1, None)]
    assert rec.run.step("a").holds == ("task.charge", "single.wf.a")


def test_a_granted_map_instance_is_admitted_as_that_instance():
    rec = start(mapped(max_task_concurrency=1))
    rec.feed(completed("list", 1, ["x", "y"], at(1)), at(1))
    second = of(rec.actions, Acquire)[-1]
    fact = answer_fact(second, Answer(True, holds=("task.each",)), at(2))
    assert (fact.step_id, fact.attempt, fact.instance, fact.id) == ("each", 1, 1, "each.i1.1.step.admitted")
    assert tasks(rec.feed(fact, at(2))) == [("each", 1, 1)]


def test_a_granted_run_becomes_workflow_admitted():
    rec = start(workflow({"id": "a", "task": "a"}, concurrency=MAX_RUNS))
    fact = answer_fact(asked(rec), Answer(True, holds=("runs.wf",)), at(2))
    assert isinstance(fact, ev.RunAdmitted)
    assert (fact.run_id, fact.step_id, fact.id, fact.payload.holds) == (RUN_ID, "", "workflow.admitted", ("runs.wf",))
    assert tasks(rec.feed(fact, at(2))) == [("a", 1, None)]
    assert (rec.run.status, rec.run.holds) == (rs.RunStatus.RUNNING, ("runs.wf",))


def test_a_rate_limited_step_is_told_when_its_token_is_free():
    rec = start(workflow(RATED))
    said = Answer(False, holds=("task.charge",), key="rate.charge", reason="rate 1 per 10 s", retry_at_ms=ms(7))
    fact = answer_fact(asked(rec), said, at(2))
    assert isinstance(fact, ev.StepLimited)
    assert (fact.step_id, fact.attempt, fact.instance, fact.id) == ("a", 1, None, f"a.1.step.limited.{ms(2)}")
    assert fact.payload == ev.Limited(
        key="rate.charge", reason="rate 1 per 10 s", until=ev.format_timestamp(at(7)), holds=("task.charge",)
    )
    actions = rec.feed(fact, at(2))
    assert of(actions, StartTimer) == [StartTimer("limit-a-1", ev.format_timestamp(at(7)), LIMIT, "a", 1)]


def test_a_queued_step_is_told_its_place_and_waits_for_its_wake_without_a_timer():
    rec = start(workflow(CONCURRENT))
    said = Answer(False, key="task.charge", reason="max_task_concurrency 2 of task charge", position=4)
    fact = answer_fact(asked(rec), said, at(2))
    assert (fact.payload.key, fact.payload.position, fact.payload.holds, fact.payload.until) == (
        "task.charge",
        4,
        (),
        "",
    )
    actions = rec.feed(fact, at(2))
    assert of(actions, StartTimer) == []  # a release wakes it (or the reaper, if that wake is lost)
    waiting = rec.run.step("a").waiting
    assert (waiting.limit, waiting.position, waiting.due) == ("task.charge", 4, "")
    assert waiting.since == ev.format_timestamp(at(0))


def test_a_queued_run_becomes_workflow_limited_with_its_place():
    rec = start(workflow({"id": "a", "task": "a"}, concurrency=MAX_RUNS))
    fact = answer_fact(asked(rec), Answer(False, key="runs.wf", reason="max_runs", position=2), at(3))
    assert isinstance(fact, ev.RunLimited)
    assert (fact.run_id, fact.step_id, fact.id) == (RUN_ID, "", f"workflow.limited.{ms(3)}")
    assert (fact.payload.position, fact.payload.until) == (2, "")
    actions = rec.feed(fact, at(3))
    assert of(actions, StartTimer) == []
    assert (rec.run.status, rec.run.waiting.position) == (rs.RunStatus.PENDING, 2)


def test_answers_at_different_moments_are_different_facts_and_the_same_answer_is_one():
    acquire = asked(start(workflow(CONCURRENT)))
    said = Answer(False, key="task.charge", position=2)
    assert answer_fact(acquire, said, at(2)).id != answer_fact(acquire, said, at(3)).id
    assert answer_fact(acquire, said, at(2)) == answer_fact(acquire, said, at(2))
    granted = Answer(True, holds=("task.charge",))
    assert answer_fact(acquire, granted, at(2)).id == answer_fact(acquire, granted, at(3)).id  # admitted once


@pytest.mark.parametrize(
    "said",
    [
        Answer(True, holds=("task.charge",)),
        Answer(False, key="task.charge", reason="busy", position=3),
        Answer(False, holds=("task.charge",), key="rate.charge", retry_at_ms=1_735_689_610_250),
    ],
)
def test_an_answer_fact_is_recorded_and_read_back_unchanged(said):
    fact = answer_fact(asked(start(workflow(RATED))), said, at(2))
    assert ev.decode_event(ev.encode_event(fact)) == fact


# ---- wake_fact: a release makes a queued holder the slot's holder ---------------------------------


def test_a_wake_fires_the_limit_timer_of_the_queued_step_and_it_asks_again():
    rec = start(workflow(CONCURRENT))
    first = asked(rec)
    answer(rec, Answer(False, key="task.charge", position=1), 1)
    assert of(rec.actions, StartTimer) == []  # queued: no timer, the wake is the limit timer's fire
    waiter = Waiter(first.holder, 0.0)
    wake = wake_fact(waiter.run_id, *waiter.step, at(4))  # as ConcurrencyActor does
    assert isinstance(wake, ev.TimerFired)
    assert (wake.run_id, wake.step_id, wake.attempt, wake.instance) == (RUN_ID, "a", 1, None)
    assert (wake.payload.timer_id, wake.payload.kind, wake.payload.step_id) == ("limit-a-1", LIMIT, "a")
    assert (wake.id, wake.timestamp) == (f"limit-a-1.wake.{ms(4)}", ev.format_timestamp(at(4)))
    assert wake_fact(RUN_ID, "a", 1, None, at(5)).id != wake.id  # a later wake is another fact
    (again,) = of(rec.feed(wake, at(4)), Acquire)
    assert again == first


def test_a_wake_for_a_map_instance_wakes_that_instance():
    rec = start(mapped(max_task_concurrency=1))
    rec.feed(completed("list", 1, ["x", "y"], at(1)), at(1))
    rec.feed(limited("each", 1, "task.each", until=16, position=1, t=1, instance=1), at(1))
    waiter = Waiter(holder("each", 1, 1), 0.0)
    wake = wake_fact(waiter.run_id, *waiter.step, at(3))
    assert (wake.payload.timer_id, wake.instance) == ("limit-each-i1-1", 1)
    assert [a.holder for a in of(rec.feed(wake, at(3)), Acquire)] == [holder("each", 1, 1)]


def test_a_wake_for_a_queued_run_makes_it_ask_again():
    rec = start(workflow({"id": "a", "task": "a"}, concurrency=MAX_RUNS))
    first = asked(rec)
    rec.feed(run_limited("runs.wf", until=16, position=1), at(1))
    waiter = Waiter(RUN_ID, 0.0)
    wake = wake_fact(waiter.run_id, *waiter.step, at(3))
    assert (wake.step_id, wake.attempt, wake.payload.timer_id, wake.id) == ("", 0, "limit", f"limit.wake.{ms(3)}")
    assert of(rec.feed(wake, at(3)), Acquire) == [first]


def test_a_wake_after_the_attempt_was_admitted_or_moved_on_asks_nothing():
    rec = start(workflow(CONCURRENT | {"retry": {"max_attempts": 1, "initial_delay": "1s"}}))
    rec.feed(admitted("a", 1, "task.charge"), at(1))
    assert of(rec.feed(wake_fact(RUN_ID, "a", 1, None, at(2)), at(2)), Acquire) == []
    rec.feed(failed("a", 1, "flaky", moment=at(3)), at(3))  # attempt 1 is gone; 2 waits out its backoff
    assert of(rec.feed(wake_fact(RUN_ID, "a", 1, None, at(4)), at(4)), Acquire) == []


# ---- released: queue places as well as slots ----------------------------------------------------------


def test_a_run_that_fails_while_a_step_waits_for_admission_gives_back_its_queue_places():
    rec = start(workflow(BOTH, {"id": "b", "task": "b"}))
    rec.feed(limited("a", 1, "task.charge", until=16, position=3), at(1))
    actions = rec.feed(failed("b", 1, "no", "permanent", at(2)), at(2))
    assert rec.run.status == rs.RunStatus.FAILED and rec.run.step("a").status == rs.StepStatus.WAITING
    assert releases(actions) == [("single.wf.a", holder("a", 1)), ("task.charge", holder("a", 1))]


def test_a_held_retry_gives_back_the_queue_place_of_its_next_attempt():
    rec = start(workflow(CONCURRENT | {"retry": {"max_attempts": 1, "initial_delay": "1s"}}, {"id": "b", "task": "b"}))
    rec.feed(admitted("a", 1, "task.charge"), at(1))
    rec.feed(failed("a", 1, "flaky", moment=at(2)), at(2))
    fire = [t for t in rec.timers if t.kind == "retry"][-1]
    rec.feed(timer_fired(fire, at(3)), at(3))
    assert (rec.run.step("a").status, rec.run.step("a").attempts) == (rs.StepStatus.WAITING, 1)
    assert releases(rec.feed(cancelled(4), at(4))) == [("task.charge", holder("a", 2))]


def test_an_admission_or_another_limited_answer_gives_nothing_back():
    rec = start(workflow(BOTH))
    assert releases(rec.feed(limited("a", 1, "task.charge", until=16, position=2), at(1))) == []
    assert releases(rec.feed(limited("a", 1, "single.wf.a", until=31, position=1, t=16), at(16))) == []
    assert releases(rec.feed(admitted("a", 1, "task.charge", "single.wf.a", t=17), at(17))) == []


def test_a_step_under_a_rate_alone_gives_nothing_back_when_cancelled():
    rec = start(workflow({"id": "a", "task": "charge", "rate_limit": {"limit": 1, "period": "1s"}}))
    rec.feed(limited("a", 1, "rate.charge", until=2), at(1))
    assert releases(rec.feed(cancelled(2), at(2))) == []  # a rate's admissions leave with time


def test_a_pending_run_gives_back_its_queue_place_once_and_an_admitted_run_its_slot_once():
    queued = start(workflow({"id": "a", "task": "a"}, concurrency=MAX_RUNS))
    before = queued.run
    queued.feed(cancelled(2), at(2))
    assert released(before, queued.run) == [Release("runs.wf", RUN_ID)]
    assert released(queued.run, queued.run) == []
    running = start(workflow({"id": "a", "task": "a"}, concurrency=MAX_RUNS))
    running.feed(run_admitted("runs.wf"), at(1))
    assert releases(running.feed(cancelled(2), at(2))) == [("runs.wf", RUN_ID)]


def test_a_run_without_its_definition_releases_nothing():
    assert released(rs.new_run(RUN_ID), rs.new_run(RUN_ID)) == []


# ---- a step that holds its slots while a rate says wait ------------------------------------------------


def rate_limited_holding() -> Recorder:
    rec = start(workflow(RATED))
    (request,) = of(rec.actions, Acquire)
    assert [r.key for r in request.requests] == ["rate.charge", "task.charge"]
    answer(rec, Answer(False, holds=("task.charge",), key="rate.charge", reason="rate", retry_at_ms=ms(7)), 2)
    return rec


def test_a_step_granted_its_slot_but_not_its_token_waits_holding_the_slot():
    rec = rate_limited_holding()
    state = rec.run.step("a")
    assert (state.status, state.admitted, state.holds) == (rs.StepStatus.WAITING, False, ("task.charge",))
    assert (state.waiting.limit, state.waiting.due) == ("rate.charge", ev.format_timestamp(at(7)))
    assert replay(rec.history) == rec.run


def test_a_step_holding_its_slot_asks_again_for_the_same_attempt_and_is_admitted_with_it():
    rec = rate_limited_holding()
    first = of(rec.actions, Acquire)[0]
    (again,) = of(fire_limit(rec, 7), Acquire)
    assert again == first  # the pool sees the holder it has: granted again, not counted twice
    actions = answer(rec, Answer(True, holds=("task.charge",)), 7)
    assert tasks(actions) == [("a", 1, None)] and releases(actions) == []
    assert releases(rec.feed(completed("a", 1, "ok", at(8)), at(8))) == [("task.charge", holder("a", 1))]


def test_a_step_holding_its_slot_while_rate_limited_gives_it_back_when_cancelled():
    rec = rate_limited_holding()
    assert releases(rec.feed(cancelled(3), at(3))) == [("task.charge", holder("a", 1))]
    assert rec.run.step("a").holds == ()


def test_a_limited_answer_that_only_grants_a_slot_is_recorded_and_the_same_one_again_is_not():
    rec = start(workflow(RATED))
    rec.feed(limited("a", 1, "rate.charge", until=7, t=2), at(2))
    granting = limited("a", 1, "rate.charge", until=7, t=2, holds=("task.charge",))
    updated, _ = evolve(rec.run, granting, at(2))
    assert updated.step("a").holds == ("task.charge",) and updated.step("a").waiting == rec.run.step("a").waiting
    assert evolve(updated, granting, at(3)) == (updated, [])


# ---- who of a run the reaper leaves alone ----------------------------------------------------------------


def test_a_pending_run_may_queue_for_its_own_slot_only():
    assert slot_holders(start(workflow(BOTH, concurrency=MAX_RUNS)).run) == {RUN_ID}


def test_the_holders_of_a_running_run_are_it_and_each_attempt_that_holds_or_waits():
    retried = {"id": "r", "task": "r", "retry": {"max_attempts": 1, "initial_delay": "5s"}}
    rec = start(workflow(BOTH, {"id": "q", "task": "q"}, {"id": "done", "task": "d"}, retried))
    rec.feed(completed("done", 1, "ok", at(1)), at(1))
    rec.feed(failed("r", 1, "flaky", moment=at(1)), at(1))  # between attempts: holds nothing
    assert slot_holders(rec.run) == {RUN_ID, holder("a", 1), holder("q", 1)}  # a's next attempt, q's current
    rec.feed(admitted("a", 1, "task.charge", "single.wf.a", t=2), at(2))
    assert slot_holders(rec.run) == {RUN_ID, holder("a", 1), holder("q", 1)}
    assert all(Waiter(h, 0.0).run_id == RUN_ID for h in slot_holders(rec.run))
    rec.feed(cancelled(3), at(3))
    assert slot_holders(rec.run) == set()


def test_the_instances_of_a_map_hold_only_while_the_map_is_under_way():
    rec = start(mapped({"id": "other", "task": "other"}, max_task_concurrency=2, optional=True))
    rec.feed(completed("list", 1, ["x", "y"], at(1)), at(1))
    rec.feed(admitted("each", 1, "task.each", t=2, instance=0), at(2))
    everyone = {RUN_ID, holder("other", 1), holder("each", 1), holder("each", 1, 0), holder("each", 1, 1)}
    assert slot_holders(rec.run) == everyone  # instance 1 queues for its slot
    rec.feed(admitted("each", 1, "task.each", t=2, instance=1), at(2))
    assert slot_holders(rec.run) == everyone
    done = ev.make_event(
        ev.STEP_FAILED,
        RUN_ID,
        {"error": "no", "failure_type": "permanent"},
        step_id="each",
        attempt=1,
        instance=1,
        timestamp=ev.format_timestamp(at(3)),
        id="each.i1.1.step.failed",
    )
    actions = rec.feed(done, at(3))
    assert releases(actions) == [("task.each", holder("each", 1, 0)), ("task.each", holder("each", 1, 1))]
    assert rec.run.step("each").instances[0].status == rs.StepStatus.QUEUED  # left as it was: the map failed
    assert slot_holders(rec.run) == {RUN_ID, holder("other", 1)}  # so the reaper frees what was released


def test_every_pool_a_workflow_may_use():
    defn = workflow(BOTH, {"id": "b", "task": "mail", "rate_limit": {"limit": 1, "period": "1s"}}, concurrency=MAX_RUNS)
    assert definition_keys(defn) == {"runs.wf", "task.charge", "single.wf.a"}
    assert definition_keys(workflow({"id": "a", "task": "a"})) == set()
