"""The REST API: workflows, runs, dead letters, limits, engine status.

Each route is a few lines: its declaration (path, types, summary) and a
call of one control-plane operation. Paths follow REFERENCE §6; answers are
the control plane's own JSON values.
"""

from __future__ import annotations

from typing import Any

from dagnats.domain.definition import WorkflowDef
from dagnats.domain.errors import InvalidRequest

from . import schemas as s
from .endpoints import Call, EndpointSet
from .operations import Operations

ROUTES = EndpointSet()
route = ROUTES.add


def ops(call: Call) -> Operations:
    return call.request.app.state.ops


# ---- workflows -------------------------------------------------------------------------


@route(
    "POST",
    "/workflows",
    "Register (or update) a workflow definition",
    "workflows",
    body=dict[str, Any],
    body_schema=WorkflowDef,
    body_required=True,
    answer=s.Registered,
    status=201,
    errors=(400, 422),
)
async def register_workflow(call: Call) -> Any:
    answer = await ops(call)("workflow.register", definition=call.body)
    return {"status": "registered", **answer}


@route("GET", "/workflows", "List the registered workflows", "workflows", answer=list[dict[str, Any]], errors=())
async def list_workflows(call: Call) -> Any:
    return await ops(call)("workflow.list")


@route("GET", "/workflows/{name}", "Show one workflow definition", "workflows")
async def get_workflow(call: Call) -> Any:
    return await ops(call)("workflow.get", name=call.path["name"])


@route("DELETE", "/workflows/{name}", "Delete a workflow definition", "workflows", answer=s.Deleted)
async def delete_workflow(call: Call) -> Any:
    return await ops(call)("workflow.delete", name=call.path["name"])


# ---- runs ------------------------------------------------------------------------------


@route(
    "GET",
    "/runs",
    "List runs, newest first, by cursor (filters: workflow, status, time range)",
    "runs",
    query=s.ListRuns,
    answer=s.RunPage,
)
async def list_runs(call: Call) -> Any:
    q: s.ListRuns = call.query
    return await ops(call)(
        "run.list", workflow=q.workflow, status=q.status, since=q.since, until=q.until, limit=q.limit, cursor=q.cursor
    )


@route("GET", "/runs/{run_id}", "A run's status, steps, input and output", "runs")
async def get_run(call: Call) -> Any:
    return await ops(call)("run.get", run_id=call.path["run_id"])


@route("GET", "/runs/{run_id}/output", "A run's output", "runs", answer=s.Output)
async def run_output(call: Call) -> Any:
    view = await ops(call)("run.get", run_id=call.path["run_id"])
    return {"run_id": view["run_id"], "status": view["status"], "output": view["output"]}


@route(
    "GET",
    "/runs/{run_id}/events",
    "A run's history, one page from a sequence",
    "runs",
    query=s.EventsQuery,
    answer=s.EventPage,
)
async def run_events(call: Call) -> Any:
    q: s.EventsQuery = call.query
    return await ops(call)("run.events", run_id=call.path["run_id"], after_seq=q.after_seq, limit=q.limit)


@route("GET", "/runs/{run_id}/inspect", "Why a run waits: timers, workers, holds", "runs")
async def inspect_run(call: Call) -> Any:
    return await ops(call)("run.inspect", run_id=call.path["run_id"])


@route(
    "GET",
    "/runs/{run_id}/wait",
    "Long-poll until the run (or a step) finishes, at most 60 s",
    "runs",
    query=s.WaitQuery,
    answer=s.Waited,
)
async def wait_run(call: Call) -> Any:
    q: s.WaitQuery = call.query
    finished, view = await ops(call).wait(call.path["run_id"], q.step, q.timeout)
    return {"finished": finished, "run": view}


@route("POST", "/runs/{run_id}/cancel", "Cancel a run", "runs", body=s.CancelRun, errors=(400, 404, 409))
async def cancel_run(call: Call) -> Any:
    b: s.CancelRun = call.body
    return await ops(call)("run.cancel", run_id=call.path["run_id"], reason=b.reason, wait=b.wait)


@route("POST", "/runs/{run_id}/pause", "Pause a running run", "runs", errors=(400, 404, 409))
async def pause_run(call: Call) -> Any:
    return await ops(call)("run.pause", run_id=call.path["run_id"])


@route("POST", "/runs/{run_id}/resume", "Resume a paused run", "runs", errors=(400, 404, 409))
async def resume_run(call: Call) -> Any:
    return await ops(call)("run.resume", run_id=call.path["run_id"])


@route("POST", "/runs/{run_id}/signal/{name}", "Send a signal (the body: any JSON value)", "runs", body=Any)
async def signal_run(call: Call) -> Any:
    return await ops(call)("run.signal", run_id=call.path["run_id"], name=call.path["name"], data=call.body)


@route(
    "POST",
    "/runs/{run_id}/approve/{step_id}",
    "Approve a step waiting for an approval",
    "runs",
    body=s.Approve,
    errors=(400, 403, 404, 409),
)
async def approve_step(call: Call) -> Any:
    b: s.Approve = call.body
    return await ops(call)(
        "run.approve",
        run_id=call.path["run_id"],
        step_id=call.path["step_id"],
        comment=b.comment,
        data=b.data,
        by=b.by,
        token=b.token,
    )


@route(
    "POST",
    "/runs/{run_id}/reject/{step_id}",
    "Reject a step waiting for an approval",
    "runs",
    body=s.Reject,
    errors=(400, 403, 404, 409),
)
async def reject_step(call: Call) -> Any:
    b: s.Reject = call.body
    return await ops(call)(
        "run.reject", run_id=call.path["run_id"], step_id=call.path["step_id"], reason=b.reason, by=b.by, token=b.token
    )


@route("DELETE", "/runs/{run_id}", "Delete a finished run's history", "runs", answer=s.Deleted, errors=(400, 404, 409))
async def delete_run(call: Call) -> Any:
    return await ops(call)("run.delete", run_id=call.path["run_id"])


# ---- dead letters, limits, status ------------------------------------------------------


@route(
    "GET",
    "/dead-letters",
    "Dead letters, oldest first",
    "dead letters",
    query=s.ListDeadLetters,
    answer=s.DeadLetterPage,
)
async def list_dead_letters(call: Call) -> Any:
    q: s.ListDeadLetters = call.query
    return await ops(call)(
        "dlq.list", run_id=q.run_id, workflow=q.workflow, since=q.since, until=q.until, limit=q.limit
    )


@route("GET", "/dead-letters/{seq}", "One dead letter with its task body", "dead letters")
async def show_dead_letter(call: Call) -> Any:
    return await ops(call)("dlq.show", seq=_seq(call))


@route(
    "POST",
    "/dead-letters/{seq}/replay",
    "Have the run take the dead letter's step up again",
    "dead letters",
    body=s.Replay,
    errors=(400, 404, 409),
)
async def replay_dead_letter(call: Call) -> Any:
    return await ops(call)("dlq.replay", seq=_seq(call), by=call.body.by or "http")


@route("DELETE", "/dead-letters/{seq}", "Discard a dead letter", "dead letters")
async def discard_dead_letter(call: Call) -> Any:
    return await ops(call)("dlq.discard", seq=_seq(call))


def _seq(call: Call) -> int:
    text = call.path["seq"]
    if not text.isdigit() or int(text) < 1 or len(text) > 18:
        raise InvalidRequest("dlq", f"a dead letter is named by its sequence number, not {text!r}")
    return int(text)


@route(
    "GET",
    "/limits",
    "Rate and concurrency limits: in use, queued, why",
    "limits",
    query=s.LimitsQuery,
    answer=s.Limits,
    errors=(400,),
)
async def limits(call: Call) -> Any:
    q: s.LimitsQuery = call.query
    return await ops(call)("limits", prefix=q.prefix, queue=q.queue, after=q.after)


@route("GET", "/status", "The engine, NATS and the cluster", "engine", errors=())
async def engine_status(call: Call) -> Any:
    return await ops(call)("status")
