"""Starting runs over HTTP, now or at ``run_at`` (a scheduled run).

A run whose ``run_at`` is more than a second ahead is checked as any start
is (the workflow exists, the input fits its schema), then stored twice: its
record in the ``scheduled_runs`` bucket (what ``GET /runs/{id}/scheduled``
shows), and its ``workflow.started`` fact as a NATS message schedule
(ADR-51) that the server fires into the run's inbox at ``run_at``, exactly
as the engine's own timers do. No engine holds the only copy: a schedule
due while every engine was down fires when the server is back. Cancelling
purges the schedule. The definition is the one registered when the run was
scheduled, and the run's ``created_at`` is the moment it was scheduled.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError

from dagnats.domain import events as ev
from dagnats.domain.errors import InvalidRequest, RunNotFound
from dagnats.domain.identifiers import check_identifier

from ..tracing import incoming_baggage, incoming_state, valid_trace_parent
from ..wire.headers import SCHEDULE, SCHEDULE_TARGET
from ..wire.names import INBOX_STREAM
from ..wire.subjects import inbox_subject, schedule_subject
from . import schemas as s
from .endpoints import Call, EndpointSet

ROUTES = EndpointSet()
SCHEDULED_BUCKET = "scheduled_runs"
START_TIMER = "scheduled-start"
MIN_AHEAD = timedelta(seconds=1)
MAX_AHEAD = timedelta(days=366)


class ScheduledRun(msgspec.Struct, frozen=True):
    run_id: str
    workflow: str
    input: Any
    run_at: str
    created_at: str
    status: str  # scheduled | cancelled (a record past its run_at reads as started)


@ROUTES.add(
    "POST",
    "/runs",
    "Start a run (idempotency key in the body or the Idempotency-Key header; run_at: later)",
    "runs",
    body=s.StartRun,
    body_required=True,
    answer=s.Started,
    status=201,
    errors=(400, 404, 409, 422),
)
async def start_run(call: Call) -> Any:
    b: s.StartRun = call.body
    key = b.idempotency_key or call.request.headers.get("idempotency-key")
    now = datetime.now(UTC)
    headers = call.request.headers
    b = msgspec.structs.replace(
        b,
        trace_parent=b.trace_parent or headers.get("traceparent"),
        trace_state=b.trace_state or headers.get("tracestate"),
        baggage=b.baggage or headers.get("baggage"),
    )
    if b.run_at is not None:
        at = _run_at(b.run_at, now)
        if at - now > MIN_AHEAD:
            return await schedule(call.request.app.state.plane, b, at, now)
    answer = await call.request.app.state.ops(
        "run.start",
        workflow=b.workflow,
        input=b.input,
        run_id=b.run_id,
        trace_parent=b.trace_parent,
        trace_state=b.trace_state,
        baggage=b.baggage,
        idempotency_key=key,
    )
    return {"run_id": answer["run_id"], "status": "deduplicated" if answer.get("deduplicated") else "started"}


def _run_at(text: str, now: datetime) -> datetime:
    try:
        at = ev.parse_timestamp(text)
    except ValueError:
        raise InvalidRequest("run.start", f"run_at {text!r} is not an RFC3339 instant") from None
    if at - now > MAX_AHEAD:
        raise InvalidRequest("run.start", f"run_at {text!r} is more than a year ahead")
    return at


async def schedule(plane: Any, b: s.StartRun, at: datetime, now: datetime) -> dict[str, Any]:
    wf = await plane.defs.get(check_identifier("workflow name", b.workflow))
    plane.starts._check_start(wf, b.input)
    run_id = check_identifier("run id", b.run_id or secrets.token_hex(16))
    record = ScheduledRun(run_id, wf.name, b.input, ev.format_timestamp(at), ev.format_timestamp(now), "scheduled")
    kv = await bucket(plane.js)
    await kv.put(run_id, msgspec.json.encode(record))
    fact = ev.WorkflowStarted(
        run_id=run_id,
        timestamp=record.created_at,
        trace_parent=b.trace_parent or "",
        payload=ev.RunStart(
            workflow_def=wf,
            input=b.input,
            trace_state=incoming_state(b.trace_state, "scheduleRun") if valid_trace_parent(b.trace_parent) else "",
            baggage=incoming_baggage(b.baggage, "scheduleRun"),
        ),
        id=ev.WORKFLOW_STARTED,
    )
    headers = {SCHEDULE: f"@at {at.strftime('%Y-%m-%dT%H:%M:%S.%fZ')}", SCHEDULE_TARGET: inbox_subject(run_id)}
    await plane.js.publish(
        schedule_subject(run_id, START_TIMER), ev.encode_event(fact), stream=INBOX_STREAM, headers=headers
    )
    return {"run_id": run_id, "status": "scheduled", "run_at": record.run_at}


async def bucket(js: JetStreamContext) -> Any:
    try:
        return await js.key_value(SCHEDULED_BUCKET)
    except BucketNotFoundError:
        return await js.create_key_value(bucket=SCHEDULED_BUCKET, history=1)


async def _record(plane: Any, run_id: str) -> tuple[Any, ScheduledRun]:
    kv = await bucket(plane.js)
    try:
        entry = await kv.get(run_id)
    except (KeyNotFoundError, NotFoundError):
        raise RunNotFound(run_id) from None
    return kv, msgspec.json.decode(entry.value or b"", type=ScheduledRun)


def _shown(record: ScheduledRun) -> dict[str, Any]:
    view = msgspec.to_builtins(record)
    if record.status == "scheduled" and ev.parse_timestamp(record.run_at) <= datetime.now(UTC):
        view["status"] = "started"
    return view


@ROUTES.add("GET", "/runs/{run_id}/scheduled", "A scheduled run's record", "runs")
async def get_scheduled(call: Call) -> Any:
    _, record = await _record(call.request.app.state.plane, call.path["run_id"])
    return _shown(record)


@ROUTES.add(
    "DELETE", "/runs/{run_id}/scheduled", "Cancel a scheduled run before it starts", "runs", errors=(400, 404, 409)
)
async def cancel_scheduled(call: Call) -> Any:
    plane = call.request.app.state.plane
    kv, record = await _record(plane, call.path["run_id"])
    if _shown(record)["status"] != "scheduled":
        raise InvalidRequest("run.unschedule", f"run {record.run_id} is {_shown(record)['status']}, not scheduled")
    try:
        await plane.js.purge_stream(INBOX_STREAM, subject=schedule_subject(record.run_id, START_TIMER))
    except NotFoundError:
        pass
    cancelled = msgspec.structs.replace(record, status="cancelled")
    await kv.put(record.run_id, msgspec.json.encode(cancelled))
    return {"run_id": record.run_id, "status": "cancelled"}
