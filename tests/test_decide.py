"""decide/evolve: dispatch, inputs, outputs, retries, timeouts, recovery."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dagnats.domain import events as ev
from dagnats.domain import state as rs
from dagnats.domain.actions import AppendEvent, DropTask, EnqueueTask, StartTimer
from dagnats.domain.decide import decide, evolve, recover
from dagnats.domain.definition import RetryPolicy, StepDef, WorkflowDef
from dagnats.domain.durations import HOUR, MILLISECOND, MINUTE, SECOND
from dagnats.domain.fold import fold, replay
from dagnats.domain.resolve import resolve_input, run_output, sink_steps
from dagnats.domain.retry import LEGACY_DELAY, calculate_delay, resolve_retry_policy
from dagnats.domain.timers import RETRY, STEP_TIMEOUT, changed_timers, retry_timer, wanted_timers
from dagnats.domain.trace_spans import attempt_trace_parent

from strategies import (
    RUN_ID,
    Recorder,
    admitted_runs,
    at,
    cancelled,
    completed,
    failed,
    recorded_runs,
    started_event,
    timer_fired,
    worker_fact,
)


def wf(*steps: StepDef, **fields) -> WorkflowDef:
    return WorkflowDef(name="wf", steps=steps, **fields)


def s(step_id: str, *deps: str, **fields) -> StepDef:
    return StepDef(id=step_id, task=fields.pop("task", step_id), depends_on=deps, **fields)


def start(defn: WorkflowDef, data=None) -> Recorder:
    rec = Recorder()
    rec.feed(started_event(defn, data), at(0))
    return rec


def enqueued(actions) -> list[tuple[str, int]]:
    return [(a.payload.step_id, a.payload.attempt) for a in actions if isinstance(a, EnqueueTask)]


def appended(actions, event_type: str) -> list[ev.Event]:
    return [a.event for a in actions if isinstance(a, AppendEvent) and a.event.type == event_type]


def timers(actions) -> list[StartTimer]:
    return [a for a in actions if isinstance(a, StartTimer)]


def fail_and_retry(rec: Recorder, step_id: str, attempt: int, t: float, error: str = "boom") -> list:
    """Report a transient failure, then fire the retry timer it armed; returns the fire's actions."""
    actions = rec.feed(failed(step_id, attempt, error, moment=at(t)), at(t))
    (timer,) = timers(actions)
    return rec.feed(timer_fired(timer, at(t + 100)), at(t + 100))


# ---- properties over random runs -----------------------------------------------------------------------


@settings(max_examples=150)
@given(recorded_runs())
def test_no_step_is_dispatched_twice_for_one_attempt(recorded):
    pairs = [(task.payload.step_id, task.payload.attempt) for task in recorded.enqueued]
    assert len(pairs) == len(set(pairs))


@settings(max_examples=150)
@given(recorded_runs())
def test_every_dispatch_is_recorded_as_a_queued_event(recorded):
    queued = [(e.step_id, e.attempt) for e in recorded.history if e.type == ev.STEP_QUEUED]
    assert queued == [(t.payload.step_id, t.payload.attempt) for t in recorded.enqueued]


@settings(max_examples=150)
@given(recorded_runs())
def test_a_step_is_dispatched_only_after_its_dependencies_are_done(recorded):
    run = rs.new_run(RUN_ID)
    for event in recorded.history:
        if event.type == ev.STEP_QUEUED:
            for dep in recorded.definition.step(event.step_id).depends_on:
                assert run.step(dep).status in rs.DONE_STEP_STATUSES
        run = fold(run, event)


@settings(max_examples=150)
@given(recorded_runs())
def test_driving_the_same_facts_again_decides_the_same_things(recorded):
    again = Recorder()
    for fact, moment in zip(recorded.facts, recorded.moments, strict=True):
        again.feed(fact, moment)
    assert again.history == recorded.history
    assert again.enqueued == recorded.enqueued


@settings(max_examples=150)
@given(recorded_runs())
def test_no_step_runs_more_often_than_its_retry_policy_allows(recorded):
    run = recorded.final
    for step in recorded.definition.steps:
        policy = resolve_retry_policy(recorded.definition, step)
        assert run.step(step.id).attempts <= (policy.max_attempts if policy else 0) + 1


@settings(max_examples=150)
@given(recorded_runs())
def test_a_completed_run_has_every_step_completed_and_its_output(recorded):
    run = recorded.final
    if run.status == rs.RunStatus.COMPLETED:
        assert all(state.status == rs.StepStatus.COMPLETED for state in run.steps.values())
        assert run.output == run_output(recorded.definition, run)


# ---- dispatch, inputs and outputs --------------------------------------------------------------------------


PIPELINE = wf(s("greet"), s("uppercase", "greet"), s("reverse", "uppercase"))


def test_the_hello_pipeline_runs_step_by_step_to_completion():
    rec = start(PIPELINE, "World")
    assert enqueued(rec.actions) == [("greet", 1)]
    assert rec.enqueued[0].payload.input == "World" and rec.enqueued[0].task == "greet"
    actions = rec.feed(completed("greet", 1, "Hello, World!"), at(1))
    assert enqueued(actions) == [("uppercase", 1)] and rec.enqueued[-1].payload.input == "Hello, World!"
    actions = rec.feed(completed("uppercase", 1, "HELLO, WORLD!"), at(2))
    assert enqueued(actions) == [("reverse", 1)]
    actions = rec.feed(completed("reverse", 1, "!DLROW ,OLLEH"), at(3))
    (done,) = appended(actions, ev.WORKFLOW_COMPLETED)
    assert done.payload == ev.RunOutput(output="!DLROW ,OLLEH")
    assert rec.run.status == rs.RunStatus.COMPLETED and rec.run.output == "!DLROW ,OLLEH"
    assert rec.run.completed_at == ev.format_timestamp(at(3))


def test_steps_without_dependencies_start_together_in_definition_order():
    rec = start(wf(s("a"), s("b"), s("c", "a", "b")), {"k": 1})
    assert enqueued(rec.actions) == [("a", 1), ("b", 1)]
    assert [t.payload.input for t in rec.enqueued] == [{"k": 1}, {"k": 1}]


def test_dispatched_tasks_carry_run_step_and_trace():
    rec = start(wf(s("a", worker_group="gpu", timeout=30 * SECOND)))
    (task,) = rec.enqueued
    assert task.group == "gpu"
    payload = task.payload
    assert (payload.run_id, payload.step_id, payload.attempt, payload.workflow_name) == (RUN_ID, "a", 1, "wf")
    assert payload.timeout_ns == 30 * SECOND and rec.run.trace_parent != ""
    # The task carries the run's trace, its parent the step attempt's (projected) span.
    assert payload.traceparent == attempt_trace_parent(rec.run.trace_parent, RUN_ID, "a", 1, None)
    assert payload.traceparent.split("-")[1] == rec.run.trace_parent.split("-")[1]


def test_input_of_a_step_without_dependencies_is_the_run_input():
    rec = start(wf(s("a")), [1, 2])
    assert resolve_input(rec.run, rec.run.definition.steps[0]) == [1, 2]


def test_input_of_a_step_with_one_dependency_is_that_output():
    rec = start(wf(s("a"), s("b", "a")), "in")
    rec.feed(completed("a", 1, {"out": True}), at(1))
    assert rec.enqueued[-1].payload.input == {"out": True}


def test_input_of_a_step_with_several_dependencies_is_an_object_keyed_by_dependency():
    rec = start(wf(s("a"), s("b"), s("c", "b", "a")), "in")
    rec.feed(completed("a", 1, 1), at(1))
    assert enqueued(rec.actions) == [("a", 1), ("b", 1)]
    rec.feed(completed("b", 1, 2), at(2))
    assert rec.enqueued[-1].payload.input == {"b": 2, "a": 1}
    assert rec.run.step("c").input == {"b": 2, "a": 1}


def test_run_output_of_several_sinks_is_an_object_keyed_by_sink():
    rec = start(wf(s("root"), s("left", "root"), s("right", "root")))
    rec.feed(completed("root", 1, 0), at(1))
    rec.feed(completed("right", 1, "R"), at(2))
    assert rec.run.status == rs.RunStatus.RUNNING
    rec.feed(completed("left", 1, "L"), at(3))
    assert rec.run.status == rs.RunStatus.COMPLETED
    assert rec.run.output == {"left": "L", "right": "R"}


def test_auxiliary_steps_are_neither_dispatched_nor_sinks():
    defn = wf(s("a", on_failure="alert"), s("alert"), aux_steps={"alert": True})
    assert sink_steps(defn) == ["a"]
    rec = start(defn)
    assert enqueued(rec.actions) == [("a", 1)]
    rec.feed(completed("a", 1, "done"), at(1))
    assert rec.run.status == rs.RunStatus.COMPLETED and rec.run.output == "done"


def test_a_duplicate_fact_decides_nothing():
    rec = start(wf(s("a"), s("b", "a")))
    rec.feed(completed("a", 1, "x"), at(1))
    run = rec.run
    assert evolve(run, completed("a", 1, "x"), at(2)) == (run, [])
    assert evolve(run, started_event(PIPELINE), at(2)) == (run, [])


def test_decide_on_a_terminal_run_does_nothing():
    rec = start(wf(s("a")))
    rec.feed(completed("a", 1, "x"), at(1))
    assert rec.run.is_terminal
    assert decide(rec.run.definition, rec.run, completed("a", 1, "x"), at(2)) == []
    assert recover(rec.run, at(2)) == []


# ---- retries ------------------------------------------------------------------------------------------


def policy(strategy="fixed", initial=SECOND, max_delay=0, multiplier=0.0, attempts=3) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=attempts, strategy=strategy, initial_delay=initial, max_delay=max_delay, multiplier=multiplier
    )


@pytest.mark.parametrize(
    ("retry", "delays"),
    [
        (policy("fixed", 2 * SECOND), [2 * SECOND] * 4),
        (policy("linear", 2 * SECOND), [2 * SECOND, 4 * SECOND, 6 * SECOND, 8 * SECOND]),
        (policy("exponential", SECOND, multiplier=3.0), [SECOND, 3 * SECOND, 9 * SECOND, 27 * SECOND]),
        (policy("exponential", SECOND), [SECOND, 2 * SECOND, 4 * SECOND, 8 * SECOND]),  # multiplier 0 means 2
        (policy("exponential", SECOND, 5 * SECOND, 2.0), [SECOND, 2 * SECOND, 4 * SECOND, 5 * SECOND]),
        (policy("linear", SECOND, 3 * SECOND), [SECOND, 2 * SECOND, 3 * SECOND, 3 * SECOND]),
        (policy("fixed", 0), [MILLISECOND] * 4),  # clamped up to 1ms
        (policy("exponential", 0, multiplier=2.0), [MILLISECOND] * 4),
        (policy("fixed", 2 * HOUR), [HOUR] * 4),  # clamped down to 1h
        (policy("exponential", 30 * MINUTE, multiplier=2.0), [30 * MINUTE, HOUR, HOUR, HOUR]),
    ],
)
def test_retry_delays(retry, delays):
    assert [calculate_delay(retry, k) for k in (1, 2, 3, 4)] == delays


def test_retry_delay_of_a_very_late_retry_is_clamped_not_an_overflow():
    assert calculate_delay(policy("exponential", SECOND, multiplier=2.0, attempts=100_000), 100_000) == HOUR
    assert calculate_delay(policy("linear", SECOND, attempts=100_000), 100_000) == HOUR


def test_a_transient_failure_schedules_a_retry_and_the_timer_redispatches():
    rec = start(wf(s("a", retry=policy("fixed", 2 * SECOND))), "in")
    actions = rec.feed(failed("a", 1, "boom", moment=at(5)), at(5))
    (scheduled,) = appended(actions, ev.STEP_RETRY_SCHEDULED)
    due = ev.format_timestamp(at(7))
    assert scheduled.payload == ev.RetryScheduled(retry_at=due, delay_ms=2000, error="boom")
    assert timers(actions) == [retry_timer("a", 1, due)]
    assert rec.run.step("a").status == rs.StepStatus.RETRYING and rec.run.step("a").retry_at == due
    actions = rec.feed(timer_fired(timers(actions)[0], at(7)), at(7))
    assert enqueued(actions) == [("a", 2)] and rec.enqueued[-1].payload.input == "in"
    assert rec.run.step("a").status == rs.StepStatus.QUEUED and rec.run.step("a").attempts == 2


def test_max_attempts_two_means_at_most_three_runs_then_the_run_fails():
    rec = start(wf(s("a", retry=policy(attempts=2))))
    fail_and_retry(rec, "a", 1, 10)
    fail_and_retry(rec, "a", 2, 20)
    actions = rec.feed(failed("a", 3, "still broken", moment=at(30)), at(30))
    assert enqueued(rec.actions) == [("a", 1), ("a", 2), ("a", 3)]
    assert timers(actions) == []
    (failure,) = appended(actions, ev.WORKFLOW_FAILED)
    assert rec.run.status == rs.RunStatus.FAILED
    assert rec.run.error == "step a failed after 3 attempts: still broken"
    assert failure.step_id == "a"


def test_a_permanent_failure_fails_the_run_at_once():
    rec = start(wf(s("a", retry=policy(attempts=5)), s("b", "a")))
    actions = rec.feed(failed("a", 1, "bad input", "permanent"), at(1))
    assert appended(actions, ev.STEP_RETRY_SCHEDULED) == [] and timers(actions) == []
    assert rec.run.status == rs.RunStatus.FAILED and rec.run.error == "step a failed: bad input"
    assert rec.run.step("b").status == rs.StepStatus.PENDING


def test_a_step_without_any_retry_policy_fails_the_run_on_its_first_failure():
    rec = start(wf(s("a")))
    rec.feed(failed("a", 1), at(1))
    assert rec.run.status == rs.RunStatus.FAILED


def test_legacy_retries_mean_fixed_five_second_retries():
    step = s("a", retries=2)
    assert resolve_retry_policy(wf(step), step) == RetryPolicy(
        max_attempts=2, strategy="fixed", initial_delay=LEGACY_DELAY, max_delay=LEGACY_DELAY
    )
    rec = start(wf(step))
    actions = rec.feed(failed("a", 1), at(1))
    assert appended(actions, ev.STEP_RETRY_SCHEDULED)[0].payload.delay_ms == 5000


def test_default_retry_applies_when_the_step_has_none():
    default = policy("linear", 3 * SECOND, attempts=1)
    own = policy("fixed", 7 * SECOND)
    defn = wf(s("a"), s("b", retry=own), s("c", retries=4), default_retry=default)
    assert resolve_retry_policy(defn, defn.step("a")) == default
    assert resolve_retry_policy(defn, defn.step("b")) == own
    assert resolve_retry_policy(defn, defn.step("c")) == default  # default_retry wins over legacy retries
    rec = start(defn)
    actions = rec.feed(failed("a", 1), at(1))
    assert appended(actions, ev.STEP_RETRY_SCHEDULED)[0].payload.delay_ms == 3000


def test_a_rate_limited_failure_waits_as_long_as_the_worker_asked():
    rec = start(wf(s("a", retry=policy("fixed", 10 * SECOND))))
    actions = rec.feed(failed("a", 1, "429", "rate_limited", retry_after_ms=1500), at(1))
    assert appended(actions, ev.STEP_RETRY_SCHEDULED)[0].payload.delay_ms == 1500


# ---- timers ---------------------------------------------------------------------------------------------


def test_a_step_timeout_fails_the_attempt_and_retries_it():
    rec = start(wf(s("a", timeout=30 * SECOND, retry=policy("fixed", SECOND))))
    actions = rec.feed(worker_fact(ev.STEP_STARTED, "a", 1, moment=at(1)), at(1))
    (timeout,) = timers(actions)
    assert (timeout.kind, timeout.step_id, timeout.attempt) == (STEP_TIMEOUT, "a", 1)
    assert timeout.due == ev.format_timestamp(at(31))
    actions = rec.feed(timer_fired(timeout, at(31)), at(31))
    (failure,) = appended(actions, ev.STEP_FAILED)
    assert failure.payload.error == "step timeout exceeded (30s)" and failure.attempt == 1
    assert rec.run.step("a").error == "step timeout exceeded (30s)"
    assert rec.run.step("a").status == rs.StepStatus.RETRYING
    (retry,) = timers(actions)
    actions = rec.feed(timer_fired(retry, at(32)), at(32))
    assert enqueued(actions) == [("a", 2)]
    # The timed-out worker finally answers: too late to count.
    run = rec.run
    assert evolve(run, completed("a", 1, "late"), at(33)) == (run, [])


def test_a_step_timeout_without_retries_fails_the_run():
    rec = start(wf(s("a", timeout=MINUTE)))
    (timeout,) = timers(rec.feed(worker_fact(ev.STEP_STARTED, "a", 1), at(1)))
    rec.feed(timer_fired(timeout, at(61)), at(61))
    assert rec.run.status == rs.RunStatus.FAILED
    assert rec.run.error == "step a failed: step timeout exceeded (1m0s)"


def test_a_stale_timer_fire_does_nothing():
    rec = start(wf(s("a", timeout=MINUTE, retry=policy("fixed", SECOND)), s("b", "a")))
    (timeout,) = timers(rec.feed(worker_fact(ev.STEP_STARTED, "a", 1), at(1)))
    fail_and_retry(rec, "a", 1, 2)  # attempt 1 failed; its retry timer fired; attempt 2 is queued
    (retry,) = [t for t in rec.timers if t.kind == RETRY]
    assert enqueued(rec.actions)[-1] == ("a", 2)
    for stale in (timeout, retry):  # both were armed for attempt 1, which is over
        run = rec.run
        assert evolve(run, timer_fired(stale, at(500)), at(500)) == (run, [])
    rec.feed(completed("a", 2, "ok"), at(600))
    run = rec.run
    assert evolve(run, timer_fired(timeout, at(700)), at(700)) == (run, [])


def test_a_timer_for_an_unknown_step_does_nothing():
    rec = start(wf(s("a")))
    run = rec.run
    ghost = StartTimer("retry-ghost-1", ev.format_timestamp(at(1)), RETRY, "ghost", 1)
    assert evolve(run, timer_fired(ghost), at(1)) == (run, [])


# ---- recovery -------------------------------------------------------------------------------------------


def test_recover_reissues_queued_tasks_and_armed_timers():
    defn = wf(s("q"), s("r", retry=policy("fixed", 5 * SECOND)), s("t", timeout=MINUTE), s("done"))
    rec = start(defn, "in")
    rec.feed(failed("r", 1, moment=at(1)), at(1))
    rec.feed(worker_fact(ev.STEP_STARTED, "t", 1, moment=at(2)), at(2))
    rec.feed(completed("done", 1, "x"), at(3))
    rebuilt = replay(rec.history)
    assert rebuilt == rec.run
    actions = recover(rebuilt, at(100))
    assert enqueued(actions) == [("q", 1)]
    (task,) = [a for a in actions if isinstance(a, EnqueueTask)]
    assert task.payload.input == "in" and task.task == "q"
    assert sorted((t.kind, t.step_id, t.attempt, t.due) for t in timers(actions)) == [
        (RETRY, "r", 1, ev.format_timestamp(at(6))),
        (STEP_TIMEOUT, "t", 1, ev.format_timestamp(at(62))),
    ]
    assert [a for a in actions if isinstance(a, AppendEvent)] == []


def test_recover_dispatches_steps_that_became_ready_but_were_never_queued():
    defn = wf(s("a"), s("b", "a"))
    rec = start(defn)
    run = fold(rec.run, completed("a", 1, "x", at(1)))  # folded, but no decision was recorded
    actions = recover(run, at(2))
    assert enqueued(actions) == [("b", 1)]
    assert [e.type for e in appended(actions, ev.STEP_QUEUED)] == [ev.STEP_QUEUED]


@pytest.mark.parametrize(
    ("hint", "delay_ms"),
    [(None, 100), ("soon", 100), ([1], 100), (True, 100), (10, 100), (1e400, 3_600_000), (7_200_000, 3_600_000)],
)
def test_a_malformed_or_extreme_retry_after_hint_is_clamped_not_a_crash(hint, delay_ms):
    rec = start(wf(s("a", retry=policy())))
    actions = rec.feed(failed("a", 1, "429", "rate_limited", retry_after_ms=hint), at(1))
    assert appended(actions, ev.STEP_RETRY_SCHEDULED)[0].payload.delay_ms == delay_ms


def test_recover_accepts_a_go_worker_timestamp_with_nanoseconds():
    rec = start(wf(s("t", timeout=MINUTE)))
    go_started = ev.make_event(
        type=ev.STEP_STARTED,
        run_id=RUN_ID,
        step_id="t",
        attempt=1,
        timestamp="2025-01-01T00:00:02.123456789Z",
        id="t.1.step.started",
    )
    rec.feed(go_started, at(2))
    (timer,) = timers(recover(rec.run, at(10)))
    assert timer.due == "2025-01-01T00:01:02.123456Z"


@pytest.mark.parametrize(
    ("text", "iso"),
    [
        ("2025-01-01T00:00:02.500000Z", "2025-01-01T00:00:02.500000+00:00"),
        ("2025-01-01T00:00:02Z", "2025-01-01T00:00:02+00:00"),
        ("2025-01-01T00:00:02.123456789Z", "2025-01-01T00:00:02.123456+00:00"),
        ("2025-01-01T02:00:02+02:00", "2025-01-01T00:00:02+00:00"),
    ],
)
def test_timestamps_parse_from_any_rfc3339_form(text, iso):
    assert ev.parse_timestamp(text).isoformat() == iso


@settings(max_examples=150)
@given(st.one_of(recorded_runs(), admitted_runs()))
def test_the_timers_a_fact_ends_are_the_same_counted_on_its_changes_only(recorded):
    """``changed_timers`` leaves out steps (and map elements) whose state object did not
    change: what it says ended must be what the whole runs' timers say ended."""
    run = rs.new_run(RUN_ID)
    for event in recorded.history:
        after = fold(run, event)
        old, new = changed_timers(run, after)
        full = {t.timer_id for t in wanted_timers(run)} - {t.timer_id for t in wanted_timers(after)}
        assert {t.timer_id for t in old} - {t.timer_id for t in new} == full
        run = after


# ---- the run's end and the task queue ----------------------------------------------------------------


def test_a_run_ended_by_its_last_result_searches_the_queue_for_nothing():
    # The last step's worker acks its own task once its result is stored: looking for
    # it in the queue (a consumer on the task stream) would be a wasted request per run.
    rec = start(wf(s("a"), s("b", "a")))
    rec.feed(completed("a", 1, {"x": 1}, at(1)), at(1))
    actions = rec.feed(completed("b", 1, {"y": 2}, at(2)), at(2))
    assert rec.run.status == rs.RunStatus.COMPLETED
    assert not [a for a in rec.actions if isinstance(a, DropTask)], actions


def test_a_run_failed_by_one_branch_drops_the_other_branchs_queued_task():
    rec = start(wf(s("a"), s("b")))
    rec.feed(failed("a", 1, "bad", moment=at(1), failure_type="permanent"), at(1))
    assert rec.run.status == rs.RunStatus.FAILED
    drops = [(d.step_id, d.up_to_attempt) for d in rec.actions if isinstance(d, DropTask)]
    assert drops == [("b", 1)]


def test_a_cancelled_run_drops_every_queued_task():
    rec = start(wf(s("a"), s("b")))
    rec.feed(cancelled(1), at(1))
    drops = sorted(d.step_id for d in rec.actions if isinstance(d, DropTask))
    assert drops == ["a", "b"]
