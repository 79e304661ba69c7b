"""Human output: aligned tables and calm lines. ``--json`` output bypasses this."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from dagnats.domain import events as ev
from dagnats.domain.durations import format_duration
from dagnats.domain.events import Event
from dagnats.domain.state import RunStatus

MAX_CELL = 80


def compact(value: Any, limit: int = MAX_CELL) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    cells = [[str(c) for c in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def _run_header(run: dict[str, Any], *optional: tuple[str, str]) -> list[str]:
    """``Run:/Workflow:/Status:`` then each (label, key) the view has a value for."""
    lines = [f"Run:      {run['run_id']}", f"Workflow: {run['workflow']}", f"Status:   {run['status']}"]
    lines += [f"{label + ':':<10}{run[key]}" for label, key in optional if run.get(key)]
    return lines


def run_status(run: dict[str, Any]) -> str:
    if run.get("kind") == "reactive":
        return execution(run)
    lines = _run_header(
        run, ("Finished", "completed_at"), ("Error", "error"), ("Parent", "parent_run_id"), ("Trace", "trace_id")
    )
    lines.insert(3, f"Created:  {run.get('created_at') or '-'}")
    if run.get("waiting"):  # a pending run under concurrency.max_runs
        lines.insert(4, f"Waiting:  for {run['waiting']['for']}")
    lines.append("Steps:")
    rows = []
    for step_id, s in run["steps"].items():
        rows.append((f"  {step_id}:", s["status"], _attempts(s), step_detail(s)))
    lines.append(table(("", "", "", ""), rows).split("\n", 1)[1] if rows else "  (none)")
    return "\n".join(lines)


def _attempts(step: dict[str, Any]) -> str:
    text = f"attempts: {step['attempts']}" if step["attempts"] else ""
    return text + (f", iterations: {step['iterations']}" if step.get("iterations") else "")


def step_detail(step: dict[str, Any]) -> str:
    """A step's output, error, what it waits for, or how its map instances stand."""
    if step["status"] == "completed":
        return compact(step["output"])
    counts = step.get("instance_counts")
    instances = "instances: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) if counts else ""
    if step.get("waiting"):
        # A running map waits for its instances: say how they stand.
        return f"waiting for {step['waiting']['for']}" + (f" ({instances})" if instances else "")
    return instances or step.get("error") or step.get("skip_reason") or ""


def inspect(view: dict[str, Any]) -> str:
    if view.get("kind") == "reactive":
        return execution(view)
    lines = _run_header(view, ("Deadline", "deadline"), ("Error", "error"), ("Parent", "parent_run_id"))
    if view.get("waiting"):
        lines.append(f"Waiting:  for {view['waiting']['for']}")
    lines.append("")
    rows = [
        (
            sid,
            s["status"],
            s["attempts"],
            _secs(s.get("queue_seconds")),
            _secs(s.get("exec_seconds")),
            "" if s["status"] == "completed" else step_detail(s),
        )
        for sid, s in view["steps"].items()
    ]
    lines.append(table(("STEP", "STATUS", "ATTEMPTS", "QUEUED", "RAN", "DETAIL"), rows))
    if view.get("timers"):
        lines.append("")
        lines.append(
            table(
                ("TIMER", "STEP", "ATTEMPT", "DUE"),
                ((t["kind"], t.get("step_id") or "-", t.get("attempt") or "-", t["due"]) for t in view["timers"]),
            )
        )
    if view.get("blockers"):
        lines.append("")
        lines.append("Blocked:")
        for sid, deps in view["blockers"].items():
            lines.append(f"  {sid} waits on {', '.join(deps)}")
    return "\n".join(lines)


def limits(items: list[dict[str, Any]], prefix: str = "") -> str:
    """Every limit: its use, its queue's length and rule; then each queue's head, why it
    waits, and its first waiters (indented under it)."""
    if not items:
        return f"No limits with keys starting with {prefix!r}." if prefix else "No limits in use."
    rows = []
    for item in items:
        use = f"{item.get('in_use', 0)}/{item.get('limit', 0)}"
        if item["kind"] == "rate":
            use += f" per {_secs(item.get('period_ms', 0) / 1000)}"
        rows.append((item["key"], item["kind"], use, item.get("queued", 0), item.get("rule", "")))
    lines = [table(("KEY", "KIND", "IN USE", "QUEUED", "RULE"), rows)]
    for item in items:
        if not item.get("queue"):
            continue
        lines += ["", f"{item['key']}: {item['head']}"]
        waiters = (
            (w.get("position"), w["run_id"], w.get("step_id") or "-", w.get("attempt") or "-", w.get("since", ""))
            for w in item["queue"]
        )
        waiting = table(("#", "RUN", "STEP", "ATTEMPT", "SINCE"), waiters)
        lines += [f"  {line}" for line in waiting.split("\n")]
        if item.get("queued", 0) > len(item["queue"]):
            lines.append(f"  … and {item['queued'] - len(item['queue'])} more")
    return "\n".join(lines)


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}ms" if value < 1 else f"{value:.2f}s"


def events(items: list[dict[str, Any]]) -> str:
    rows = [
        (
            e["timestamp"],
            e["type"],
            e.get("step_id") or "",
            e.get("attempt") or "",
            compact(e.get("payload")) if e.get("payload") is not None else "",
        )
        for e in items
    ]
    return table(("TIMESTAMP", "TYPE", "STEP", "ATTEMPT", "DATA"), rows)


def run_list(runs: list[dict[str, Any]]) -> str:
    if not runs:
        return "No runs."
    rows = [(r["run_id"], r["workflow"], r["status"], r.get("created_at") or "", _progress(r)) for r in runs]
    return table(("RUN_ID", "WORKFLOW", "STATUS", "CREATED", "STEPS"), rows)


def _progress(summary: dict[str, Any]) -> str:
    """A DAG run's steps done of its steps; a reactive execution's phase, iteration and firings."""
    if summary.get("kind") == "reactive":
        phase = summary.get("phase") or "-"
        return f"phase {phase}, iteration {summary.get('iteration', 0)}, {summary['steps_done']} fired"
    return f"{summary['steps_done']}/{summary['steps_total']}"


def workflow_list(defs: list[dict[str, Any]]) -> str:
    if not defs:
        return "No workflows registered."
    rows = [(d["name"], d.get("version", ""), len(d["steps"]), _timeout(d.get("timeout", 0))) for d in defs]
    return table(("NAME", "VERSION", "STEPS", "TIMEOUT"), rows)


def workflow_show(d: dict[str, Any]) -> str:
    head = [
        f"Name:    {d['name']}",
        f"Version: {d.get('version') or '-'}",
        f"Steps:   {len(d['steps'])}",
        f"Timeout: {_timeout(d.get('timeout', 0))}",
        "",
    ]
    rows = [
        (
            s["id"],
            s.get("task", ""),
            s.get("type", "normal"),
            ", ".join(s.get("depends_on", [])) or "-",
            _timeout(s.get("timeout", 0)),
        )
        for s in d["steps"]
    ]
    return "\n".join(head) + table(("ID", "TASK", "TYPE", "DEPENDS ON", "TIMEOUT"), rows)


def engine_status(st: dict[str, Any]) -> str:
    nats = st["nats"]
    lines = [
        f"NATS:       {'connected' if nats['connected'] else 'disconnected'} "
        f"({nats.get('url')}, server {nats.get('server_version')})",
        f"JetStream:  available ({len(st['jetstream']['streams'])} streams)",
        f"Live runs:  {st['engine']['live_runs']} ({st['engine']['active_runs']} active)",
        "",
    ]
    rows = [(name, v["messages"], v["bytes"]) for name, v in sorted(st["jetstream"]["streams"].items())]
    text = "\n".join(lines) + table(("STREAM", "MESSAGES", "BYTES"), rows)
    if st.get("cluster"):
        text += "\n\n" + cluster(st["cluster"])
    return text


def cluster(view: dict[str, Any]) -> str:
    """The engines (heartbeat age, partitions owned) and each partition's owner and backlog."""
    engines = [
        (
            e["engine"] + (" (this)" if e["this"] else ""),
            e["pid"],
            e["host"],
            "-" if e["lease_age_s"] is None else f"{e['lease_age_s']:.1f}s",
            len(e["partitions"]),
            _ranges(e["partitions"]),
        )
        for e in view["engines"]
    ]
    lines = [
        f"Engines ({len(view['engines'])}; {view['partitions']} partitions, lease TTL {view['lease_ttl_s']:g}s)",
        table(("ENGINE", "PID", "HOST", "LEASE AGE", "OWNS", "PARTITIONS"), engines),
    ]
    if view["unowned"]:
        lines.append(f"Partitions without a live owner: {_ranges(view['unowned'])}")
    rows = [
        (
            r["partition"],
            r["owner"] or "-",
            "-" if r["pending"] is None else r["pending"],
            "-" if r["in_flight"] is None else r["in_flight"],
        )
        for r in view["partition_table"]
    ]
    lines += ["", table(("PARTITION", "OWNER", "PENDING", "IN FLIGHT"), rows)]
    if view.get("legacy_pending"):
        lines.append(f"Unpartitioned facts (from before partitions) waiting: {view['legacy_pending']}")
    return "\n".join(lines)


def _ranges(numbers: list[int]) -> str:
    """``[0, 1, 2, 3, 7, 9, 10]`` -> ``0-3,7,9-10``."""
    spans: list[list[int]] = []
    for n in sorted(numbers):
        if spans and spans[-1][1] == n - 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in spans) or "-"


def cancelled(answer: dict[str, Any]) -> str:
    """What a cancel did: the run ended cancelled, ended otherwise first, or is still ending."""
    run_id, status = answer["run_id"], answer["status"]
    if answer["cancelled"]:
        return f"Run {run_id} cancelled"
    if RunStatus(status).is_terminal:
        return f"Run {run_id} {status} before the cancel took effect"
    return f"Run {run_id}: cancel requested; still {status}"


def watch_line(event: Event) -> str | None:
    """One line per step outcome and run outcome, as the tutorial shows."""
    step = event.step_id
    if isinstance(event, ev.StepCompleted):
        return f"step.{step}: completed"
    if isinstance(event, ev.StepFailed):
        return f"step.{step}: failed (attempt {event.attempt}: {event.failure.error})"
    if isinstance(event, ev.StepRetryScheduled):
        return f"step.{step}: retrying in {format_duration(event.payload.delay_ms * 1_000_000)}"
    if isinstance(event, ev.StepSkipped):
        return f"step.{step}: skipped"
    if isinstance(event, ev.StepRecovered):
        return f"step.{step}: recovered"
    if isinstance(event, ev.WorkflowCompleted):
        return f"Run {event.run_id} completed"
    if isinstance(event, (ev.WorkflowPaused, ev.WorkflowResumed, ev.WorkflowCompensating)):
        return f"Run {event.run_id} {event.type.split('.')[1]}"
    if isinstance(
        event, (ev.WorkflowFailed, ev.WorkflowCancelled, ev.WorkflowCompensated, ev.WorkflowCompensateFailed)
    ):
        reason = event.payload.text
        return f"Run {event.run_id} {event.type.split('.')[1]}" + (f": {reason}" if reason else "")
    return None


def _timeout(ns: int) -> str:
    return format_duration(int(ns)) if ns else "none"


# ---- cluster and drill ------------------------------------------------------------


def cluster_processes(view: dict[str, Any]) -> str:
    rows = [
        (
            p["role"],
            p["name"],
            p["pid"],
            "yes" if p["alive"] else "no",
            p.get("port") or "-",
            p.get("http_port") or "-",
            _meta(p),
        )
        for p in view["processes"]
    ]
    lines = [f"Cluster:  {view['directory']}", f"NATS URL: {view['url']}", ""]
    lines.append(table(("ROLE", "NAME", "PID", "ALIVE", "PORT", "MONITOR", "JETSTREAM"), rows))
    return "\n".join(lines)


def _meta(proc: dict[str, Any]) -> str:
    if proc["role"] != "nats" or not proc["alive"]:
        return "-"
    leader = proc.get("meta_leader") or "no leader"
    current = "current" if proc.get("current") else "not current"
    return f"leader {leader}, {current}"


def cluster_down(result: dict[str, Any]) -> str:
    stopped = ", ".join(result["stopped"]) or "nothing"
    text = f"Stopped {stopped} ({result['directory']})"
    if result["already_gone"]:
        text += f"\nAlready gone: {', '.join(result['already_gone'])}"
    return text


DRILL_ROWS = (
    ("runs started", "runs_started"),
    ("runs completed", "runs_completed"),
    ("runs failed", "runs_failed"),
    ("runs lost", "runs_lost"),
    ("runs stuck", "runs_stuck"),
    ("runs quarantined", "runs_quarantined"),
    ("divergent histories", "divergent_histories"),
    ("history records / events", ("records", "events")),
    ("duplicate events", "duplicate_events"),
    ("event waits matched / timed out", ("waits_matched", "waits_timed_out")),
    ("step executions", "step_exec_total"),
    ("duplicates within bound", "dup_exec_within_bound"),
    ("duplicates beyond bound", "dup_exec_beyond_bound"),
    ("most executions of a step", "max_exec_one_step"),
    ("faults injected", "faults"),
    ("kill -> next event p50 / max (s)", ("recovery_first_event_p50_s", "recovery_first_event_max_s")),
    ("kill -> affected runs done max (s)", "recovery_all_done_max_s"),
    ("NATS unavailable (s)", "nats_unavailable_s"),
)


def drill_report(result: dict[str, Any], rerun: str) -> str:
    figures = result["figures"]

    def cell(key: str | tuple[str, ...]) -> str:
        keys = (key,) if isinstance(key, str) else key
        return " / ".join("-" if figures.get(k) is None else str(figures[k]) for k in keys)

    lines = [table(("FIGURE", "VALUE"), [(label, cell(key)) for label, key in DRILL_ROWS]), ""]
    if result["faults"]:
        faults = [
            (f"{f['at']:.1f}", f["kind"], f["target"], f"{f['restarted_at'] - f['killed_at']:.1f}", f["starts"])
            for f in result["faults"]
        ]
        lines += [table(("AT (s)", "FAULT", "TARGET", "DOWN (s)", "STARTS"), faults), ""]
    lines += [f"  {p}" for p in result["problems"][:20]]
    if len(result["problems"]) > 20:
        lines.append(f"  ... and {len(result['problems']) - 20} more (see --json)")
    lines.append(f"{'PASS' if result['ok'] else 'FAIL'}  seed {result['seed']}; re-run with: {rerun}")
    return "\n".join(lines)


def execution(view: dict[str, Any]) -> str:
    """A reactive execution: its phase, iteration and the timeline of rule firings."""
    lines = _run_header(
        view, ("Key", "key"), ("Finished", "completed_at"), ("Deadline", "deadline"), ("Error", "error")
    )
    lines += [f"Phase:    {view['phase'] or '-'}", f"Iteration: {view['iteration']}"]
    if view.get("pending_task_id"):
        lines.append(f"Waiting:  for callback {view['pending_task_id']}")
    lines.append("Timeline:")
    rows = [
        (f"  {t['timestamp']}", t["rule_id"], t["trigger_mode"], t["trigger_info"], t["action"], t["phase_after"],
         t["iteration"])
        for t in view.get("timeline", [])
    ]  # fmt: skip
    head = ("  TIMESTAMP", "RULE", "TRIGGER", "INFO", "ACTION", "PHASE", "ITERATION")
    lines.append(table(head, rows) if rows else "  (none)")
    return "\n".join(lines)
