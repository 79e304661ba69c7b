"""How a reactive execution shows in ``run status|inspect|events|list`` (and ``--json``).

The control plane asks here first: a history whose first record holds
``reactive.*`` events is an execution, folded with the reactive fold and shown
with its phase, iteration and timeline; anything else is a DAG run (None).
``run list`` reads the executions' index (``reactive_executions``, one entry
per execution, written by the reactive runtime after each record): each entry
is the execution's summary, in the shape of a DAG run's plus its phase and
iteration.
"""

from __future__ import annotations

from typing import Any

import msgspec
from nats.js import JetStreamContext

from dagnats.domain.reactive.events import decode_reactive_record, is_reactive_record
from dagnats.domain.reactive.fold import Execution
from dagnats.domain.reactive.state import ExecutionStatus
from dagnats.domain.state import RunStatus

from ..wire.names import HISTORY_STREAM
from ..wire.reading import first_message, kv_entries, stored_batches
from ..wire.subjects import history_subject
from .store import load_execution

# One entry per execution, its summary: what `run list` shows and what `recover` walks after a restart.
EXECUTIONS_BUCKET = "reactive_executions"
# What `run list --status` (and GET /runs?status=) takes: a DAG run's statuses, then an execution's own.
LISTED_STATUSES = tuple(dict.fromkeys(str(s) for s in (*RunStatus, *ExecutionStatus)))


async def is_execution(js: JetStreamContext, run_id: str) -> bool:
    msg = await first_message(js, HISTORY_STREAM, history_subject(run_id))
    return msg is not None and is_reactive_record(msg.data or b"")


async def execution_view(js: JetStreamContext, run_id: str) -> dict[str, Any] | None:
    """The execution as ``run status`` shows it, or None if ``run_id`` is not a reactive execution."""
    if not await is_execution(js, run_id):
        return None
    ex, last_seq, _ = await load_execution(js, run_id)
    state = ex.state
    return {
        "kind": "reactive",
        "run_id": run_id,
        "workflow": ex.workflow_id,
        "key": ex.key,
        "status": ex.status,
        "phase": state.get("phase", ""),
        "iteration": state.get("iteration", 0),
        "error": state.get("error", ""),
        "created_at": state.get("created_at", ""),
        "updated_at": state.get("updated_at", ""),
        "completed_at": state.get("completed_at", ""),
        "deadline": state.get("deadline", ""),
        "pending_task_id": ex.pending.task_id if ex.pending else "",
        "firings": {rule: f.count for rule, f in ex.firings.items()},
        "timeline": state.get("timeline", []),
        "state": state,
        "last_seq": last_seq,
        "steps": {},
    }


async def execution_events(js: JetStreamContext, run_id: str, after_seq: int, limit: int) -> dict[str, Any] | None:
    """A page of the execution's events (without the state each carries), or None for a DAG run."""
    if not await is_execution(js, run_id):
        return None
    events: list[dict[str, Any]] = []
    async for msg in stored_batches(js, HISTORY_STREAM, history_subject(run_id), after_seq):
        for event in decode_reactive_record(msg.data or b"[]"):
            data = msgspec.to_builtins(event)
            data.pop("state", None)
            kind, eid, stamp = data.pop("type"), data.pop("id", ""), data.pop("timestamp", "")
            data.pop("execution_id", None)
            step = data.get("rule_id") or ""
            events.append({"seq": msg.seq, "type": kind, "run_id": run_id, "id": eid, "timestamp": stamp,
                           "step_id": step or None, "payload": data})  # fmt: skip
        if len(events) >= limit:
            return {"events": events, "next": msg.seq}
    return {"events": events, "next": None}


def execution_summary(ex: Execution) -> dict[str, Any]:
    """An execution as ``run list`` shows it: a DAG run's summary (a rule firing counts as a
    step done) with its kind, key, phase and iteration."""
    state, fired = ex.state, ex.fired
    return {
        "run_id": ex.execution_id,
        "workflow": ex.workflow_id,
        "status": ex.status,
        "created_at": state.get("created_at") or None,
        "completed_at": state.get("completed_at") or None,
        "steps_done": fired,
        "steps_total": fired,
        "kind": "reactive",
        "key": ex.key,
        "phase": state.get("phase", ""),
        "iteration": state.get("iteration", 0),
    }


async def execution_summaries(js: JetStreamContext) -> list[dict[str, Any]]:
    """Every execution's summary, read in one pass over the index (none if no reactive engine ever ran)."""
    summaries = []
    for key, value in await kv_entries(js, EXECUTIONS_BUCKET, ">"):
        try:
            entry = msgspec.json.decode(value)
        except msgspec.DecodeError:
            continue
        if isinstance(entry, dict) and entry.get("run_id") == key:
            summaries.append(entry)
    return summaries
