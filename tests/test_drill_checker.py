"""The drill's checker and fault schedule, without processes: each breach is reported."""

from __future__ import annotations

from dagnats.domain.events import make_event
from dagnats.infra.drill.faults import schedule
from dagnats.infra.drill.invariants import FaultDone, Observed, Record, check

T0 = "2026-01-01T00:00:00Z"


def ev(type: str, run: str, step: str = "", attempt: int = 0, at: str = T0):
    return make_event(type, run, step_id=step, attempt=attempt, timestamp=at)


def observed(histories, journal=(), faults=(), runs=None, poison=()):
    runs = list(runs or histories)
    return Observed(runs, set(poison), histories, {}, list(journal), list(faults), [])


def test_a_started_run_without_history_is_lost_and_one_without_an_end_is_stuck():
    report = check(observed({"r1": [], "r2": [Record(1, "r2.a", [ev("step.completed", "r2", "a", 1)])]}))
    assert (report.figures["runs_lost"], report.figures["runs_stuck"]) == (1, 1)
    assert not report.ok


def test_a_poison_run_left_unfinished_counts_as_quarantined_not_stuck():
    history = {"p1": [Record(1, "p1.a", [ev("step.completed", "p1", "a", 1)])]}
    report = check(observed(history, poison={"p1"}))
    assert (report.figures["runs_quarantined"], report.figures["runs_stuck"]) == (1, 0)


def test_a_record_stored_twice_or_two_endings_make_a_history_divergent():
    done = [ev("workflow.completed", "r1")]
    twice = {"r1": [Record(1, "r1.x", done), Record(2, "r1.x", done)]}
    report = check(observed(twice))
    assert report.figures["divergent_histories"] == 1
    assert any("stored 2 times" in p for p in report.problems)
    assert any("2 terminal events" in p for p in report.problems)


def test_an_attempt_both_completed_and_failed_is_divergent_and_a_repeat_is_a_duplicate_event():
    events = [
        ev("step.completed", "r1", "a", 1),
        ev("step.completed", "r1", "a", 1),
        ev("step.failed", "r1", "a", 1),
        ev("workflow.completed", "r1"),
    ]
    report = check(observed({"r1": [Record(1, "m1", events)]}))
    assert report.figures["duplicate_events"] == 1
    assert any("both completed and failed" in p for p in report.problems)


def test_executions_beyond_one_per_attempt_need_a_fault_or_a_cut_short_execution():
    history = {"r1": [Record(1, "m1", [ev("step.completed", "r1", "a", 1), ev("workflow.completed", "r1")])]}

    def row(phase, pid, t):
        return {"phase": phase, "run": "r1", "step": "a", "attempt": 1, "pid": pid, "t": t}

    journal = [row("begin", 1, 1.0), row("end", 1, 1.1), row("begin", 2, 2.0), row("end", 2, 2.1)]
    assert check(observed(history, journal)).figures["dup_exec_beyond_bound"] == 1
    fault = FaultDone("engine", "engine1", killed_at=1.5, restarted_at=2.5)
    figures = check(observed(history, journal, [fault])).figures
    assert (figures["dup_exec_within_bound"], figures["dup_exec_beyond_bound"]) == (1, 0)
    cut_short = [row("begin", 1, 1.0), row("begin", 2, 2.0), row("end", 2, 2.1)]
    assert check(observed(history, cut_short)).figures["dup_exec_beyond_bound"] == 0


def test_the_fault_schedule_is_the_same_for_the_same_seed():
    first = schedule(7, ("engine", "worker", "nats"), 10.0, 2, 2, per_kind=2)
    assert first == schedule(7, ("engine", "worker", "nats"), 10.0, 2, 2, per_kind=2)
    assert first != schedule(8, ("engine", "worker", "nats"), 10.0, 2, 2, per_kind=2)
    assert sorted(f.kind for f in first) == ["engine", "engine", "nats", "nats", "worker", "worker"]
    assert all(0 <= f.at <= 10.0 for f in first)
