"""fold: a total, pure, deterministic reducer; duplicates and stale facts change nothing."""

from datetime import UTC, datetime

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_golden_histories import load_history

from dagnats.domain import events as ev
from dagnats.domain import state as rs
from dagnats.domain.definition import StepDef, WorkflowDef
from dagnats.domain.durations import SECOND
from dagnats.domain.fold import fold, replay, truncate_utf8
from dagnats.domain.replays import replay_problem

from strategies import (
    RUN_ID,
    at,
    completed,
    dag_definitions,
    failed,
    recorded_runs,
    started_event,
    stray_events,
    worker_fact,
)

TIMED = dag_definitions(timeouts=(30 * SECOND,))


def encoded(run: rs.WorkflowRun) -> bytes:
    return rs.RUN_ENCODER.encode(run)


def step_names(run: rs.WorkflowRun) -> tuple[str, ...]:
    return tuple(run.steps)


# ---- properties ----------------------------------------------------------------------------------


@settings(max_examples=150)
@given(recorded_runs())
def test_replaying_a_history_twice_gives_identical_state(recorded):
    first, second = replay(recorded.history), replay(recorded.history)
    assert first == second
    assert encoded(first) == encoded(second)


@settings(max_examples=150)
@given(recorded_runs())
def test_replaying_the_recorded_history_rebuilds_the_state_evolve_reached(recorded):
    assert replay(recorded.history) == recorded.final


@settings(max_examples=150)
@given(recorded_runs(), st.data())
def test_duplicated_events_change_nothing(recorded, data):
    history = list(recorded.history)
    copies = data.draw(st.lists(st.integers(0, len(history) - 1), max_size=8))
    for original in copies:
        # A re-delivered copy lands anywhere after the event it copies.
        index = history.index(recorded.history[original])
        position = data.draw(st.integers(index + 1, len(history)))
        history.insert(position, recorded.history[original])
    assert replay(history) == replay(recorded.history)


@settings(max_examples=150)
@given(recorded_runs(TIMED), st.data())
def test_a_late_completion_of_a_timed_out_attempt_changes_nothing(recorded, data):
    timeouts = [(i, e) for i, e in enumerate(recorded.history) if isinstance(e, ev.StepFailed) and e.failure.timeout]
    for index, timeout in timeouts:
        late = completed(timeout.step_id, timeout.attempt, "too late", at(500))
        position = data.draw(st.integers(index + 1, len(recorded.history)))
        history = recorded.history[:position] + [late] + recorded.history[position:]
        assert replay(history) == recorded.final


@settings(max_examples=150)
@given(recorded_runs(), st.data())
def test_reports_from_earlier_attempts_change_nothing(recorded, data):
    run = recorded.final
    for step_id, state in run.steps.items():
        if state.attempts > 1:
            attempt = data.draw(st.integers(1, state.attempts - 1))
            event_type = data.draw(st.sampled_from([ev.STEP_STARTED, ev.STEP_COMPLETED, ev.STEP_FAILED]))
            assert fold(run, worker_fact(event_type, step_id, attempt, {"error": "old"})) is run


@settings(max_examples=150)
@given(recorded_runs(), st.data())
def test_events_after_a_terminal_state_change_nothing(recorded, data):
    run = recorded.final
    if not run.is_terminal:
        cancel = ev.make_event(
            type=ev.WORKFLOW_CANCELLED,
            run_id=RUN_ID,
            timestamp=ev.format_timestamp(at(900)),
            payload={"reason": "cancelled by test"},
            id=ev.WORKFLOW_CANCELLED,
        )
        run = fold(run, cancel)
    assert run.is_terminal
    strays = data.draw(st.lists(stray_events(step_names(run)), max_size=10))
    for event in recorded.history + strays:
        if isinstance(event, ev.WorkflowStartRepeated):
            continue  # a caller's trace link is recorded even after the end (test below)
        after = fold(run, event)
        if isinstance(event, ev.StepReplayed) and after is not run:
            # An operator's replay of the step a failed run failed on reopens it, by design.
            assert run.status == rs.RunStatus.FAILED and not replay_problem(run, event.step_id)
            assert after.status == rs.RunStatus.RUNNING
            continue
        assert after is run


def test_a_repeated_start_links_its_caller_once_even_after_the_end():
    history = load_history("traced-repeated-start")
    run = replay(history[:1])
    caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    repeat = ev.make_event(ev.WORKFLOW_START_REPEATED, RUN_ID, {"caller": caller}, id="start_repeated.x")
    linked = fold(run, repeat)
    assert linked.linked_starts == (caller,) and fold(linked, repeat) is linked
    ended = replay(history)
    assert ended.is_terminal and fold(ended, repeat) is ended  # already linked
    assert fold(rs.new_run(RUN_ID), repeat).linked_starts == ()  # nothing before the start


@settings(max_examples=150)
@given(recorded_runs(), st.data())
def test_fold_returns_the_same_object_when_an_event_does_not_apply(recorded, data):
    strays = data.draw(st.lists(stray_events(step_names(recorded.final)), max_size=10))
    run = rs.new_run(RUN_ID)
    for event in recorded.history:
        for other in recorded.history[:3] + strays:
            after = fold(run, other)
            assert after is run or after != run
        after = fold(run, event)
        assert after is run or after != run
        run = after


@settings(max_examples=150)
@given(st.lists(stray_events(("s0", "s1")), max_size=20), dag_definitions(max_steps=2))
def test_fold_never_raises_on_any_event(events, wf):
    run = fold(rs.new_run(RUN_ID), started_event(wf))
    for event in events:
        run = fold(run, event)
    assert isinstance(run, rs.WorkflowRun)


# ---- single events ----------------------------------------------------------------------------------------


WF = WorkflowDef(
    name="pair",
    steps=(StepDef(id="a", task="ta"), StepDef(id="b", task="tb", depends_on=("a",))),
    max_step_error_bytes=8,
)


def started_run() -> rs.WorkflowRun:
    return fold(rs.new_run(RUN_ID), started_event(WF, {"n": 1}))


def queued(step_id: str, attempt: int, data=None) -> ev.Event:
    return ev.make_event(
        type=ev.STEP_QUEUED,
        run_id=RUN_ID,
        step_id=step_id,
        attempt=attempt,
        timestamp="t-queued",
        payload={"task": "ta", "input": data},
        id=ev.fact_id(ev.STEP_QUEUED, step_id, attempt),
    )


def test_workflow_started_sets_up_the_run_from_its_payload():
    run = started_run()
    assert run.status == rs.RunStatus.RUNNING and run.workflow == "pair" and run.definition == WF
    assert run.input == {"n": 1}
    assert run.steps == {"a": rs.StepState(task="ta"), "b": rs.StepState(task="tb")}
    assert run.created_at == run.started_at == ev.format_timestamp(at(0))
    assert run.trace_parent.startswith("00-")


def test_a_second_workflow_started_changes_nothing():
    run = started_run()
    other = WorkflowDef(name="other", steps=(StepDef(id="z", task="z"),))
    assert fold(run, started_event(other)) is run


def test_a_workflow_started_without_a_definition_changes_nothing():
    run = rs.new_run(RUN_ID)
    assert fold(run, ev.make_event(type=ev.WORKFLOW_STARTED, run_id=RUN_ID)) is run


@pytest.mark.parametrize("payload", ['"x"', "{}", '{"workflow_def": {"name": "x"}}', '{"workflow_def": 5}'])
def test_a_workflow_started_without_a_usable_definition_does_not_decode(payload):
    data = f'{{"type": "workflow.started", "run_id": "{RUN_ID}", "payload": {payload}}}'.encode()
    with pytest.raises(msgspec.ValidationError):
        ev.decode_event(data)


def test_step_events_before_the_run_started_change_nothing():
    run = rs.new_run(RUN_ID)
    assert fold(run, queued("a", 1)) is run
    assert fold(run, completed("a", 1)) is run


def test_a_step_goes_queued_running_completed():
    run = fold(started_run(), queued("a", 1, {"n": 1}))
    assert run.step("a").status == rs.StepStatus.QUEUED and run.step("a").attempts == 1
    assert run.step("a").input == {"n": 1}
    run = fold(run, worker_fact(ev.STEP_STARTED, "a", 1, moment=at(1)))
    assert run.step("a").status == rs.StepStatus.RUNNING and run.step("a").worker_id == "worker-1"
    run = fold(run, completed("a", 1, "out", at(2)))
    assert run.step("a").status == rs.StepStatus.COMPLETED and run.step("a").output == "out"
    assert run.step("a").finished_at == ev.format_timestamp(at(2))


def test_a_completion_may_arrive_without_a_started_report():
    run = fold(fold(started_run(), queued("a", 1)), completed("a", 1, 42))
    assert run.step("a").status == rs.StepStatus.COMPLETED and run.step("a").output == 42


def test_a_duplicate_completion_leaves_the_run_unchanged():
    run = fold(fold(started_run(), queued("a", 1)), completed("a", 1, "first"))
    assert fold(run, completed("a", 1, "second")) is run


def test_a_failure_records_error_and_failure_type_truncated_to_the_limit():
    run = fold(fold(started_run(), queued("a", 1)), failed("a", 1, "ééééé!", "non_retriable"))
    state = run.step("a")
    assert state.status == rs.StepStatus.FAILED
    assert state.error == "éééé"  # 8 bytes, no character split
    assert state.failure_type == "permanent"  # the Go alias


def test_truncate_utf8_never_splits_a_character():
    assert truncate_utf8("aé", 2) == "a"
    assert truncate_utf8("abc", 3) == "abc"
    assert truncate_utf8("", 0) == ""


def test_a_queued_event_must_open_a_higher_attempt():
    run = fold(started_run(), queued("a", 2))
    assert fold(run, queued("a", 1)) is run
    assert fold(run, queued("a", 2)) is run


def test_events_for_unknown_steps_change_nothing():
    run = started_run()
    assert fold(run, completed("ghost", 1)) is run


@pytest.mark.parametrize("event_type", ["step.teleported", "workflow.exploded", "whatever"])
def test_events_of_unknown_types_do_not_decode(event_type):
    with pytest.raises(msgspec.ValidationError, match="Invalid value"):
        ev.decode_event(f'{{"type": "{event_type}", "run_id": "{RUN_ID}"}}'.encode())
    with pytest.raises(ValueError, match="unknown event type"):
        ev.make_event(event_type, RUN_ID)


def test_cancelling_marks_unfinished_steps_cancelled():
    run = fold(fold(started_run(), queued("a", 1)), completed("a", 1, "ok"))
    run = fold(
        run, ev.make_event(type=ev.WORKFLOW_CANCELLED, run_id=RUN_ID, timestamp="t9", payload={"reason": "user"})
    )
    assert run.status == rs.RunStatus.CANCELLED and run.error == "user" and run.completed_at == "t9"
    assert run.step("a").status == rs.StepStatus.COMPLETED
    assert run.step("b").status == rs.StepStatus.CANCELLED


def test_workflow_completed_records_the_output():
    run = fold(started_run(), ev.make_event(type=ev.WORKFLOW_COMPLETED, run_id=RUN_ID, payload={"output": [1, 2]}))
    assert run.status == rs.RunStatus.COMPLETED and run.output == [1, 2] and run.is_terminal


def test_run_state_survives_a_snapshot_round_trip():
    run = fold(fold(started_run(), queued("a", 1)), completed("a", 1, {"x": [1, None]}))
    assert rs.RUN_DECODER.decode(rs.RUN_ENCODER.encode(run)) == run
    assert msgspec.json.decode(rs.RUN_ENCODER.encode(run))["steps"]["a"]["output"] == {"x": [1, None]}


def test_a_decoded_payload_reads_as_the_json_object_it_is_stored_as():
    # Scripts written when decoded payloads were dicts subscript them.
    from dagnats.domain.events import decode_record, encode_event

    event = ev.WorkflowCompleted(
        run_id="r", timestamp="2026-11-30T00:00:00Z", payload=ev.RunOutput(output={"n": 3}), id="workflow.completed"
    )
    (decoded,) = decode_record(b"[" + encode_event(event) + b"]")
    assert decoded.payload["output"] == {"n": 3} and decoded.payload.get("output") == {"n": 3}
    assert decoded.payload.get("nothing", 7) == 7
    with pytest.raises(KeyError):
        decoded.payload["nothing"]


@settings(max_examples=300)
@given(
    st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9000, 1, 1), timezones=st.timezones()),
)
def test_timestamps_are_rfc3339_utc_with_microseconds_and_parse_back(moment):
    text = ev.format_timestamp(moment)
    assert text == moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert ev.parse_timestamp(text) == moment.astimezone(UTC)
