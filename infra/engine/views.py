"""JSON views of runs and events for the control plane (and so the CLI and the client)."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import msgspec

from dagnats.domain.capabilities import capability_set, describe_capabilities, offers
from dagnats.domain.definition import StepDef
from dagnats.domain.events import Event, TimerFired, parse_timestamp
from dagnats.domain.resolve import blockers
from dagnats.domain.state import DONE_STEP_STATUSES, RunStatus, StepState, StepStatus, Waiting, WorkflowRun
from dagnats.domain.timers import add_ns

from ..wire.workers import WorkerRecord

_ENCODER = msgspec.json.Encoder()


def trace_id(trace_parent: str) -> str:
    parts = trace_parent.split("-")
    return parts[1] if len(parts) == 4 else ""


def run_view(run: WorkflowRun) -> dict[str, Any]:
    view = {
        "run_id": run.run_id,
        "workflow": run.workflow,
        "status": run.status,
        "steps": {step_id: step_view(s) for step_id, s in run.steps.items()},
        "input": run.input,
        "output": run.output,
        "error": run.error or None,
        "created_at": run.created_at or None,
        "completed_at": run.completed_at or None,
        "trace_id": trace_id(run.trace_parent),
        "trace_parent": run.trace_parent or None,
    }
    if run.parent_run_id:
        view.update(parent_run_id=run.parent_run_id, parent_step_id=run.parent_step_id, root_run_id=run.root)
    if run.dynamic_steps:
        view["dynamic_steps"] = list(run.dynamic_steps)
    if run.waiting is not None and run.status == RunStatus.PENDING:
        view["waiting"] = waiting_view(run.waiting)
    if run.holds:
        view["holds"] = list(run.holds)
    return view


def step_view(s: StepState) -> dict[str, Any]:
    view: dict[str, Any] = {
        "status": s.status,
        "attempts": s.attempts,
        "output": s.output,
        "error": s.error or None,
        "task": s.task,
        "queued_at": s.queued_at or None,
        "started_at": s.started_at or None,
        "finished_at": s.finished_at or None,
    }
    optional = {
        "retry_at": s.retry_at,
        "worker_id": s.worker_id,
        "skip_reason": s.skip_reason,
        "iterations": s.iterations,
        "fragment": list(s.fragment),
    }
    view.update((key, value) for key, value in optional.items() if value)
    if s.waiting is not None and s.status in _WAITS:
        view["waiting"] = waiting_view(s.waiting)
    if s.holds:
        view["holds"] = list(s.holds)
    if s.instances:
        view["instances"] = [_instance_view(i) for i in s.instances]
        view["instance_counts"] = dict(Counter(str(i.status) for i in s.instances))
    return view


_WAITS = frozenset({StepStatus.RUNNING, StepStatus.QUEUED, StepStatus.WAITING})


def waiting_view(waiting: Waiting) -> dict[str, Any]:
    """What a step waits for, in words a person reads and fields a script reads."""
    view: dict[str, Any] = msgspec.to_builtins(waiting)
    match = waiting.match or {}
    condition = f" where {match.get('left')} {match.get('op')} {json.dumps(match.get('right'))}" if match else ""
    until = f" (until {waiting.due})" if waiting.due else ""
    view["for"] = {
        "sleep": f"the time to wake, {waiting.due}",
        "approval": f"an approval (request sent on {waiting.subject}){until}",
        "event": f"event {waiting.event}{condition}{until}",
        "child": f"child run {waiting.child_run_id}",
        "signal": f"signal {waiting.event}{until}",
        "instances": "its map instances",
        "fragment": "the steps it planned",
        "limit": _limit_text(waiting),
    }.get(waiting.kind, waiting.kind)
    return view


def _limit_text(waiting: Waiting) -> str:
    """Which limit holds a step (or run), since when, and when it asks again."""
    place = f", place {waiting.position} in its queue" if waiting.position else ""
    again = f", asks again at {waiting.due}" if waiting.due else ""
    return f"{waiting.description or waiting.limit} (limit {waiting.limit}{place}, since {waiting.since}{again})"


def _instance_view(i: StepState) -> dict[str, Any]:
    view: dict[str, Any] = {"status": i.status, "attempts": i.attempts}
    if i.error:
        view["error"] = i.error
    if i.waiting is not None and i.status == StepStatus.WAITING:
        view["waiting"] = waiting_view(i.waiting)
    return view


def run_summary(run: WorkflowRun) -> dict[str, Any]:
    done = sum(1 for s in run.steps.values() if s.status in DONE_STEP_STATUSES)
    return {
        "run_id": run.run_id,
        "workflow": run.workflow,
        "status": run.status,
        "created_at": run.created_at or None,
        "completed_at": run.completed_at or None,
        "steps_done": done,
        "steps_total": len(run.steps),
    }


def event_view(seq: int, event: Event) -> dict[str, Any]:
    view = {
        "seq": seq,
        "type": event.type,
        "run_id": event.run_id,
        "step_id": event.step_id or None,
        "timestamp": event.timestamp,
        "attempt": event.attempt or None,
        "payload": msgspec.to_builtins(event.payload),
        "trace_parent": event.trace_parent or None,
    }
    if event.worker_id:
        view["worker_id"] = event.worker_id
    if event.started_at:
        view["started_at"] = event.started_at
    return view


def _seconds(start: str, end: str) -> float | None:
    if not start or not end:
        return None
    return round((parse_timestamp(end) - parse_timestamp(start)).total_seconds(), 6)


def inspect_view(
    run: WorkflowRun, timers: list[TimerFired] | None = None, workers: list[WorkerRecord] | None = None
) -> dict[str, Any]:
    """The run with per-step queue and execution times, what pending steps wait on, and
    its armed timers (soonest first); given the live ``workers``, a queued step that
    requires capabilities none of them offers waits for such a worker."""
    view = run_view(run)
    for step_id, waiting in capability_waits(run, workers or []).items():
        view["steps"][step_id]["waiting"] = waiting
    view["timers"] = [
        {
            "kind": t.payload.kind,
            "step_id": t.payload.step_id or None,
            "attempt": t.payload.attempt or None,
            "due": t.payload.due,
            "timer_id": t.payload.timer_id,
        }
        for t in sorted(timers or [], key=lambda t: t.payload.due)
    ]
    for step_id, s in run.steps.items():
        view["steps"][step_id]["queue_seconds"] = _seconds(s.queued_at, s.started_at)
        view["steps"][step_id]["exec_seconds"] = _seconds(s.started_at, s.finished_at)
    view["blockers"] = blockers(run.definition, run) if run.definition else {}
    if run.definition is not None and run.definition.timeout and run.created_at:
        view["deadline"] = add_ns(run.created_at, int(run.definition.timeout))
    return view


def awaits_capabilities(run: WorkflowRun) -> bool:
    """Whether a queued step (or map instance) of the run requires capabilities: only
    then is the worker registry worth reading for its inspect view."""
    return bool(_queued_capability_steps(run))


def capability_waits(run: WorkflowRun, workers: list[WorkerRecord]) -> dict[str, dict[str, Any]]:
    """step id -> what it waits for, for each queued step requiring capabilities that no
    live worker of its task (and worker group) offers. A read model: nothing is recorded,
    and the step is delivered the moment such a worker starts."""
    return {
        step.id: _capability_waiting(step, state)
        for step, state in _queued_capability_steps(run)
        if not any(_can_take(worker, step) for worker in workers)
    }


def _queued_capability_steps(run: WorkflowRun) -> list[tuple[StepDef, StepState]]:
    if run.definition is None or run.is_terminal:
        return []
    found = []
    for step in run.definition.steps:
        state = run.steps.get(step.id)
        if not step.required_capabilities or state is None:
            continue
        queued = state.status == StepStatus.QUEUED or any(i.status == StepStatus.QUEUED for i in state.instances)
        if queued:
            found.append((step, state))
    return found


def _can_take(worker: WorkerRecord, step: StepDef) -> bool:
    in_group = step.worker_group in worker.groups if step.worker_group else not worker.groups
    return step.task in worker.tasks and in_group and offers(worker.capabilities, step.required_capabilities)


def _capability_waiting(step: StepDef, state: StepState) -> dict[str, Any]:
    caps = describe_capabilities(step.required_capabilities)
    group = f" in group {step.worker_group}" if step.worker_group else ""
    reason = f"no live worker of task {step.task}{group} offers capabilities {caps}"
    view = waiting_view(Waiting(kind="capabilities", since=state.queued_at, description=reason))
    view["for"] = f"a worker of task {step.task}{group} offering capabilities {caps}: none is live"
    view["capabilities"] = list(capability_set(step.required_capabilities))
    return view


def fit_view(view: dict[str, Any], budget: int) -> dict[str, Any]:
    """``view`` with its largest values elided until it fits in ``budget`` bytes.

    An elided value becomes ``{"elided": "<what>", "bytes": N}`` and the view
    lists it under ``"elided"``: a run whose outputs add up to more than one
    message can still be looked at.
    """
    if len(_ENCODER.encode(view)) <= budget:
        return view
    places = [("output", view, "output"), ("input", view, "input")]
    for step_id, step in view["steps"].items():
        places.append((f"steps.{step_id}.output", step, "output"))
    sized = sorted(
        ((len(_ENCODER.encode(holder[key])), name, holder, key) for name, holder, key in places),
        key=lambda item: item[0],
        reverse=True,
    )
    view["elided"] = []
    for size, name, holder, key in sized:
        holder[key] = {"elided": name, "bytes": size}
        view["elided"].append(name)
        if len(_ENCODER.encode(view)) <= budget:
            break
    return view
