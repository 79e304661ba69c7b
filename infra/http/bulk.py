"""Bulk operations: start many runs, cancel or retry the runs a filter picks, each with ``dry_run``.

A filter is a workflow plus an optional status and creation time range
(``since``/``until``, RFC3339). A dry run answers with what would be done
and does nothing. Cancelling skips runs already finished; retrying starts a
new run of the same workflow with the same input for each failed (or, with
``status``, each matching finished) run — the old run is left as it was.
"""

from __future__ import annotations

from typing import Any

from dagnats.domain.errors import DagnatsError, InvalidRequest
from dagnats.domain.identifiers import check_identifier
from dagnats.domain.state import TERMINAL_RUN_STATUSES

from . import schemas as s
from .endpoints import Call, EndpointSet

ROUTES = EndpointSet()
MAX_PICKED = 10_000


@ROUTES.add(
    "POST",
    "/runs/bulk",
    "Start many runs of one workflow (at most 1000 inputs)",
    "bulk",
    body=s.BulkStart,
    body_required=True,
    answer=s.BulkStarted,
    status=201,
    errors=(400, 404, 422),
)
async def start_many(call: Call) -> Any:
    b: s.BulkStart = call.body
    plane, ops = call.request.app.state.plane, call.request.app.state.ops
    wf = await plane.defs.get(check_identifier("workflow name", b.workflow))
    for index, data in enumerate(b.inputs):  # every input is checked before any run starts
        try:
            plane.starts._check_start(wf, data)
        except DagnatsError as err:
            raise InvalidRequest("runs.bulk", f"inputs[{index}]: {err}") from None
    if b.dry_run:
        return s.BulkStarted([], len(b.inputs), True)
    run_ids = [(await ops("run.start", workflow=wf.name, input=data))["run_id"] for data in b.inputs]
    return s.BulkStarted(run_ids, len(run_ids), False)


async def picked(call: Call, f: s.RunFilter, default: str | None) -> list[dict[str, Any]]:
    """The runs the filter picks, newest first."""
    status = None if (f.status or default) == "all" else (f.status or default)
    body = {"workflow": f.workflow, "status": status, "since": f.since, "until": f.until, "limit": 1000}
    runs: list[dict[str, Any]] = []
    while len(runs) < MAX_PICKED:
        page = await call.request.app.state.ops("run.list", **body)
        runs += page["runs"]
        if page["next"] is None:
            break
        body["cursor"] = page["next"]
    return runs


@ROUTES.add(
    "POST",
    "/runs/cancel",
    "Cancel the runs a filter picks",
    "bulk",
    body=s.RunFilter,
    body_required=True,
    answer=s.BulkCancelled,
    errors=(400,),
)
async def cancel_many(call: Call) -> Any:
    f: s.RunFilter = call.body
    runs = await picked(call, f, "all")
    live = [r["run_id"] for r in runs if r["status"] not in TERMINAL_RUN_STATUSES]
    skipped = [r["run_id"] for r in runs if r["status"] in TERMINAL_RUN_STATUSES]
    cancelled = []
    for run_id in [] if f.dry_run else live:
        try:
            await call.request.app.state.ops("run.cancel", run_id=run_id, reason="bulk cancel", wait=0.0)
            cancelled.append(run_id)
        except DagnatsError:  # it finished meanwhile
            skipped.append(run_id)
    return s.BulkCancelled(live if f.dry_run else cancelled, skipped, len(runs), f.dry_run)


@ROUTES.add(
    "POST",
    "/runs/retry",
    "Start each failed run a filter picks again, with the same input",
    "bulk",
    body=s.RunFilter,
    body_required=True,
    answer=s.BulkRetried,
    errors=(400,),
)
async def retry_many(call: Call) -> Any:
    f: s.RunFilter = call.body
    ops = call.request.app.state.ops
    runs = await picked(call, f, "failed")
    chosen = [r for r in runs if r["status"] in TERMINAL_RUN_STATUSES and r["status"] != "completed"]
    skipped = [r["run_id"] for r in runs if r not in chosen]
    retried = []
    for r in chosen:
        if f.dry_run:
            retried.append(s.Retried(r["run_id"]))
            continue
        view = await ops("run.get", run_id=r["run_id"])
        started = await ops("run.start", workflow=f.workflow, input=view["input"])
        retried.append(s.Retried(r["run_id"], started["run_id"]))
    return s.BulkRetried(retried, skipped, len(runs), f.dry_run)
