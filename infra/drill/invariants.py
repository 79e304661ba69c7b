"""The drill's checker: the invariants of RELIABILITY.md §4.2, from histories and the journal.

Theory of operation. The checker does no I/O: the runner hands it what it
read after the load (every run's history records as stored, the engine's
status of each run, the workers' journal, the faults as they fired, the
probe's failed publishes) and it returns the figures of §4.4.

- Runs (I1): a run whose start was acknowledged but has no history is lost;
  one with a history that is not terminal at the deadline is stuck (a poison
  run the drill made on purpose is counted as quarantined instead).
- History integrity (I3, I5, I7): per run, records in stream order, none
  stored twice (the same `Nats-Msg-Id`), each decodes, one terminal event at
  most, no attempt of a step both completed and failed, and refolding the
  whole history gives the status the engine reports. Any breach makes the
  history divergent. A repeated identical step outcome is counted in
  `duplicate_events` (the fold takes one).
- Executions (I4): per (run, step, attempt), executions in the journal are
  allowed up to 1 + faults whose outage (plus the redelivery after it)
  overlaps that attempt + executions cut short
  (begun, never ended: their redelivery is expected). More is a duplicate
  beyond the at-least-once bound.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from dagnats.domain.events import Event, parse_timestamp
from dagnats.domain.fold import replay

# The drill worker's ack_wait (3 s) and a margin: how long after a fault a redelivery it caused can come.
REDELIVERY_GRACE = 5.0
TERMINAL_EVENTS = {"workflow.completed", "workflow.failed", "workflow.cancelled", "workflow.compensated"}
OUTCOMES = {"step.completed", "step.failed"}


@dataclass
class Record:
    """One stored history record of a run."""

    seq: int
    msg_id: str
    events: list[Event] | None  # None: it did not decode
    error: str = ""


@dataclass
class FaultDone:
    """A fault as it fired: wall-clock kill and restart times."""

    kind: str
    target: str
    killed_at: float
    restarted_at: float
    starts: int = 1  # starts it took to bring the process back (a supervisor would retry)
    at: float = 0.0  # when, in seconds after the load began (from the schedule)


@dataclass
class Observed:
    runs: list[str]  # every run whose start was acknowledged, poison runs included
    poison: set[str]
    histories: dict[str, list[Record]]
    statuses: dict[str, str]  # the engine's status of each run ("" if it did not answer)
    journal: list[dict[str, Any]]
    faults: list[FaultDone]
    probe_failures: list[tuple[float, float]]  # (first failed publish, next success)


@dataclass
class Report:
    figures: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        f = self.figures
        keys = ("runs_lost", "runs_stuck", "divergent_histories", "dup_exec_beyond_bound")
        return all(f.get(key, 0) == 0 for key in keys)


def check(seen: Observed) -> Report:
    report = Report()
    f = report.figures
    ends: dict[str, float] = {}
    events_by_run: dict[str, list[Event]] = {}
    counts: Counter[str] = Counter()
    for run_id in seen.runs:
        records = seen.histories.get(run_id, [])
        events = [e for r in records for e in (r.events or [])]
        events_by_run[run_id] = events
        outcome = _run_outcome(run_id, records, events, seen, report)
        counts[outcome] += 1
        if outcome in ("completed", "failed"):
            ends[run_id] = _ts(events[-1])
    f["runs_started"] = len(seen.runs)
    f["runs_completed"] = counts["completed"]
    f["runs_failed"] = counts["failed"]
    f["runs_lost"] = counts["lost"]
    f["runs_stuck"] = counts["stuck"]
    f["runs_quarantined"] = counts["quarantined"]
    f["divergent_histories"] = len({p.split(":")[1] for p in report.problems if p.startswith("divergent:")})
    f["records"] = sum(len(seen.histories.get(r, [])) for r in seen.runs)
    f["events"] = sum(len(e) for e in events_by_run.values())
    f["duplicate_events"] = sum(_duplicate_outcomes(e) for e in events_by_run.values())
    kinds = Counter(e.type for events in events_by_run.values() for e in events)
    f["waits_matched"], f["waits_timed_out"] = kinds["step.wait.matched"], kinds["step.wait.timed_out"]
    f.update(_executions(seen, events_by_run, report.problems))
    f.update(_recovery(seen, events_by_run, ends))
    f["nats_unavailable_s"] = round(max((b - a for a, b in seen.probe_failures), default=0.0), 2)
    return report


def _run_outcome(run_id: str, records: list[Record], events: list[Event], seen: Observed, report: Report) -> str:
    if not records:
        report.problems.append(f"lost: run {run_id} was started but has no history")
        return "lost"
    broken = _divergence(run_id, records, events, seen.statuses.get(run_id, ""))
    report.problems.extend(f"divergent: run {run_id}: {why}" for why in broken)
    terminal = [e.type for e in events if e.type in TERMINAL_EVENTS]
    if terminal:
        return "completed" if terminal[0] == "workflow.completed" else "failed"
    if run_id in seen.poison:
        return "quarantined"
    report.problems.append(f"stuck: run {run_id} is {seen.statuses.get(run_id) or 'unknown'} at the deadline")
    return "stuck"


def _divergence(run_id: str, records: list[Record], events: list[Event], status: str) -> list[str]:
    why = []
    seqs = [r.seq for r in records]
    if seqs != sorted(set(seqs)):
        why.append(f"record sequences out of order or repeated: {seqs}")
    ids = Counter(r.msg_id for r in records if r.msg_id)
    why += [f"record {msg_id} stored {n} times" for msg_id, n in ids.items() if n > 1]
    why += [f"record at seq {r.seq} does not decode: {r.error}" for r in records if r.events is None]
    terminal = [e.type for e in events if e.type in TERMINAL_EVENTS]
    if len(terminal) > 1:
        why.append(f"{len(terminal)} terminal events: {terminal}")
    outcomes: dict[tuple[str, int], set[str]] = defaultdict(set)
    for e in events:
        if e.type in OUTCOMES and e.instance is None:
            outcomes[(e.step_id, e.attempt)].add(e.type)
    why += [f"step {s} attempt {a} both completed and failed" for (s, a), t in outcomes.items() if len(t) > 1]
    try:
        folded = replay(events).status.value
    except Exception as err:  # noqa: BLE001 - a fold that raises is exactly what this reports
        why.append(f"refold raises {err!r}")
    else:
        if status and folded != status:
            why.append(f"refold gives {folded}, the engine reports {status}")
    return why


def _duplicate_outcomes(events: list[Event]) -> int:
    seen = Counter((e.type, e.step_id, e.attempt, e.instance) for e in events if e.type in OUTCOMES)
    return sum(n - 1 for n in seen.values())


def _executions(seen: Observed, events_by_run: dict[str, list[Event]], problems: list[str]) -> dict[str, Any]:
    runs = set(seen.runs)
    begun: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    ended: Counter[tuple[str, str, int, int]] = Counter()
    for row in seen.journal:
        if row["run"] not in runs:
            continue
        key = (row["run"], row["step"], row["attempt"])
        if row["phase"] == "begin":
            begun[key].append(row)
        else:
            ended[(*key, row["pid"])] += 1
    done_at = _outcome_times(events_by_run)
    # A fault touches an attempt whose execution overlaps the outage, or the redelivery
    # after it: an ack or report lost while a process was down comes back after ack_wait.
    outages = [(fault.killed_at, fault.restarted_at + REDELIVERY_GRACE) for fault in seen.faults]
    within = beyond = 0
    for key, rows in begun.items():
        unfinished = sum(1 for r in rows if not ended[(*key, r["pid"])])
        start, end = rows[0]["t"], done_at.get(key, float("inf"))
        touched = sum(1 for down, up in outages if down <= end and start <= up)
        bound = 1 + touched + unfinished
        within += max(0, min(len(rows), bound) - 1)
        beyond += max(0, len(rows) - bound)
        if len(rows) > bound:
            problems.append(
                f"duplicate beyond bound: run {key[0]} step {key[1]} attempt {key[2]} ran {len(rows)} times "
                f"(bound {bound}: {touched} faults, {unfinished} cut short)"
            )
    per_step = Counter((run, step) for (run, step, _), rows in begun.items() for _ in rows)
    return {
        "step_exec_total": sum(len(rows) for rows in begun.values()),
        "dup_exec_within_bound": within,
        "dup_exec_beyond_bound": beyond,
        "max_exec_one_step": max(per_step.values(), default=0),
    }


def _outcome_times(events_by_run: dict[str, list[Event]]) -> dict[tuple[str, str, int], float]:
    found: dict[tuple[str, str, int], float] = {}
    for run_id, events in events_by_run.items():
        for e in events:
            if e.type in OUTCOMES:
                found.setdefault((run_id, e.step_id, e.attempt), _ts(e))
    return found


def _recovery(seen: Observed, events_by_run: dict[str, list[Event]], ends: dict[str, float]) -> dict[str, Any]:
    """Per fault: kill -> the next event of any run it affected; kill -> all of them done."""
    first_event: list[float] = []
    all_done: list[float] = []
    for fault in seen.faults:
        affected = [
            r for r, events in events_by_run.items() if events and _ts(events[0]) < fault.killed_at < ends.get(r, 1e18)
        ]
        if not affected:
            continue
        after = [_ts(e) for r in affected for e in events_by_run[r] if _ts(e) > fault.killed_at]
        if after:
            first_event.append(min(after) - fault.killed_at)
        if all(r in ends for r in affected):
            all_done.append(max(ends[r] for r in affected) - fault.killed_at)
    return {
        "faults": len(seen.faults),
        "recovery_first_event_p50_s": _round(statistics.median(first_event) if first_event else None),
        "recovery_first_event_max_s": _round(max(first_event, default=None)),
        "recovery_all_done_max_s": _round(max(all_done, default=None)),
    }


def _ts(event: Event) -> float:
    return parse_timestamp(event.timestamp).timestamp() if event.timestamp else 0.0


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
