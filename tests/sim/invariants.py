"""DESIGN.md's invariants, checked on what a simulation left (RELIABILITY.md §4.2).

- I1 no lost run: every started run completed (the shapes all can), and the
  queues drained (nothing pending, nothing held) once the faults stopped;
- I3 history integrity: each record was appended expecting the record before it
  (the chain has no gap and no fork: no two records ever claimed one place), no
  event id twice in a run, every step's completion recorded exactly once;
- I4 bounded duplicates: executions of each (run, step, attempt) <= 1 + the faults
  that touched that task (worker crashes, ack_wait expiries, dispatches by a record
  that failed its expectation);
- I5 single writer in effect: the store never took an append whose expected
  sequence was not the run's last, zombies' included (their stale ones all failed);
- I6 timers fire at or after their due time;
- I7 every state any engine published (and every snapshot) equals the fold of the
  history up to its sequence;
- and no RunActor crashed (the simulation injects no exception an actor catches).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from dagnats.domain import events as ev
from dagnats.domain.fold import fold
from dagnats.domain.state import RunStatus, WorkflowRun, new_run

from .scheduler import Simulation
from .workers import SHAPES
from .world import START


@dataclass
class Report:
    violations: list[str] = field(default_factory=list)
    stats: Counter[str] = field(default_factory=Counter)


def check(sim: Simulation) -> Report:
    report = Report()
    states: dict[str, dict[int, WorkflowRun]] = {}
    for run_id, shape in sim.runs.items():
        states[run_id] = _history(sim, run_id, shape, report)
    _published_states(sim, states, report)
    _executions(sim, report)
    _writers(sim, report)
    _timers(sim, report)
    for crash in sim.world.actor_crashes:
        report.violations.append(f"run actor crashed: {crash}")
    if not sim.drained:
        inbox, tasks = len(sim.world.inbox.messages), len(sim.world.tasks.messages)
        report.violations.append(f"I1: not settled after the faults stopped: inbox {inbox}, tasks {tasks} pending")
    report.stats.update(kills=sim.killed, pauses=sim.paused, takeovers=sim.world.leases.takeovers)
    return report


def _history(sim: Simulation, run_id: str, shape: str, report: Report) -> dict[int, WorkflowRun]:
    """Check one run's history; its state after each record, by sequence."""
    records = sim.world.history.records.get(run_id, [])
    run, previous, at = new_run(run_id), 0, {}
    ids: Counter[str] = Counter()
    completions: Counter[str] = Counter()
    for record in records:
        if record.expected != previous:
            report.violations.append(f"I3 {run_id}: record {record.seq} expected {record.expected}, not {previous}")
        previous = record.seq
        for event in ev.decode_record(record.body):
            ids[event.id] += 1
            if isinstance(event, ev.StepCompleted):
                completions[event.step_id] += 1
            run = fold(run, event)
        at[record.seq] = run
    for fact_id, count in sorted(ids.items()):
        if count > 1:
            report.violations.append(f"I3 {run_id}: event {fact_id} recorded {count} times")
    if run.status != RunStatus.COMPLETED:
        report.violations.append(f"I1 {run_id} ({shape}): {run.status.value} after the faults stopped")
    for step in SHAPES[shape].steps:
        expected = 1 if step.type == "normal" else 0
        if run.status == RunStatus.COMPLETED and completions[step.id] != expected:
            report.violations.append(f"I3 {run_id}: step {step.id} completed {completions[step.id]} times")
    report.stats["records"] += len(records)
    return at


def _published_states(sim: Simulation, states: dict[str, dict[int, WorkflowRun]], report: Report) -> None:
    published: list[tuple[str, Any, int]] = list(sim.states)
    published += [("snapshot", run, seq) for run, seq in sim.world.history.snapshot_log]
    for who, run, seq in published:
        expected = states.get(run.run_id, {}).get(seq)
        if expected is None:
            report.violations.append(f"I7 {run.run_id}: {who} published a state at {seq}, not a record of it")
        elif run != expected:
            report.violations.append(f"I7 {run.run_id}: {who}'s state at {seq} differs from the history's")
    report.stats["states_checked"] += len(published)


def _executions(sim: Simulation, report: Report) -> None:
    journal = sim.world.journal
    for key, count in sorted(journal.executions.items()):
        bound = 1 + journal.faults[key]
        report.stats["executions"] += count
        report.stats["most_executions"] = max(report.stats["most_executions"], count)
        if count > bound:
            report.stats["dup_exec_beyond_bound"] += count - bound
            report.violations.append(f"I4 {key}: executed {count} times, bound {bound}")
        else:
            report.stats["dup_exec_within_bound"] += count - 1
    report.stats.update({f"fault: {cause}": n for cause, n in journal.causes.items()})


def _writers(sim: Simulation, report: Report) -> None:
    for attempt in sim.world.history.attempts:
        if attempt.seq and attempt.expected != attempt.last:
            report.violations.append(f"I5 {attempt.run_id}: {attempt.writer} appended expecting a stale sequence")
        if attempt.zombie:
            report.stats["zombie_appends_failed" if not attempt.seq else "zombie_appends_current"] += 1
        if not attempt.seq:
            report.stats["appends_refused"] += 1


def _timers(sim: Simulation, report: Report) -> None:
    for fired_at, due in sim.world.schedules.fired:
        due_at = (ev.parse_timestamp(due) - START).total_seconds()
        late = fired_at - due_at
        if late < -1e-6:
            report.violations.append(f"I6: a timer due at {due} fired {-late:.3f}s early")
        report.stats["timer_late_ms_max"] = max(report.stats["timer_late_ms_max"], int(late * 1000))
