"""Human output of the CLI, from the JSON the control plane answers: aligned, calm."""

from __future__ import annotations

from dagnats.domain.state import Waiting
from dagnats.infra.cli import render
from dagnats.infra.engine.views import waiting_view

RUN_A, RUN_B, RUN_C = "a" * 32, "b" * 32, "c" * 32

LIMITS = [
    {
        "key": "rate.charge",
        "kind": "rate",
        "rule": "rate_limit of task charge (50 per 1000 ms)",
        "limit": 50,
        "period_ms": 1000,
        "in_use": 50,
        "holders": [],
        "queue": [
            {"run_id": RUN_C, "step_id": "charge", "attempt": 2, "since": "2026-11-30T09:15:38.737000Z", "position": 1}
        ],
        "queued": 1,
        "head": f"run {RUN_C} step charge waits since 2026-11-30T09:15:38.737000Z: 50 of 50 per 1000 ms used",
        "next_free_at": "2026-11-30T09:15:39.100000Z",
    },
    {
        "key": "runs.nightly-report",
        "kind": "slots",
        "rule": "concurrency.max_runs 1 of workflow nightly-report",
        "limit": 1,
        "period_ms": 0,
        "in_use": 1,
        "holders": [{"run_id": RUN_A, "since": "2026-11-30T09:15:30.000000Z"}],
        "queue": [
            {"run_id": RUN_B, "since": "2026-11-30T09:15:31.000000Z", "position": 1},
            {"run_id": RUN_C, "since": "2026-11-30T09:15:32.000000Z", "position": 2},
        ],
        "queued": 12,
        "head": f"run {RUN_B} waits since 2026-11-30T09:15:31.000000Z: all 1 slots in use (...)",
        "next_free_at": "",
    },
    {
        "key": "task.render",
        "kind": "slots",
        "rule": "max_task_concurrency 2 of task render",
        "limit": 2,
        "period_ms": 0,
        "in_use": 1,
        "holders": [{"run_id": RUN_A, "step_id": "render", "attempt": 1, "since": "2026-11-30T09:15:30.000000Z"}],
        "queue": [],
        "queued": 0,
        "head": "",
        "next_free_at": "",
    },
]


def columns(header: str, names: list[str]) -> list[int]:
    return [header.index(name) for name in names]


def test_limits_is_a_table_with_aligned_columns_then_each_queue_indented_under_its_head():
    lines = render.limits(LIMITS).splitlines()
    names = ["KEY", "KIND", "IN USE", "QUEUED", "RULE"]
    starts = columns(lines[0], names)
    assert lines[1:4] == [
        "rate.charge          rate   50/50 per 1.00s  1       rate_limit of task charge (50 per 1000 ms)",
        "runs.nightly-report  slots  1/1              12      concurrency.max_runs 1 of workflow nightly-report",
        "task.render          slots  1/2              0       max_task_concurrency 2 of task render",
    ]
    for row in lines[1:4]:
        cells = [row[start:].split("  ")[0] for start in starts]
        assert all(cell and not cell.startswith(" ") for cell in cells), row
        assert all(row[start - 2 : start] == "  " for start in starts[1:]), row

    # Only queues with waiters are shown, each under "<key>: <head>", indented two spaces.
    assert lines[4:] == [
        "",
        f"rate.charge: {LIMITS[0]['head']}",
        "  #  RUN                               STEP    ATTEMPT  SINCE",
        f"  1  {RUN_C}  charge  2        2026-11-30T09:15:38.737000Z",
        "",
        f"runs.nightly-report: {LIMITS[1]['head']}",
        "  #  RUN                               STEP  ATTEMPT  SINCE",
        f"  1  {RUN_B}  -     -        2026-11-30T09:15:31.000000Z",
        f"  2  {RUN_C}  -     -        2026-11-30T09:15:32.000000Z",
        "  … and 10 more",
    ]
    header = lines[6]
    for row in lines[7:8]:
        assert row.index(RUN_C) == header.index("RUN") and row.index("2026") == header.index("SINCE")


def test_limits_with_nothing_to_show_says_so_naming_the_prefix():
    assert render.limits([]) == "No limits in use."
    assert render.limits([], "task.*") == "No limits with keys starting with 'task.*'."


def test_a_pending_run_says_what_it_waits_for_in_status():
    waiting = waiting_view(
        Waiting(
            kind="limit",
            since="2026-11-30T09:16:13.506898Z",
            description="concurrency.max_runs 1 of workflow r: all 1 in use, queued at 3",
            limit="runs.r",
            position=3,
        )
    )
    run = {
        "run_id": RUN_B,
        "workflow": "r",
        "status": "pending",
        "created_at": "2026-11-30T09:16:13.504758Z",
        "waiting": waiting,
        "steps": {"build": {"status": "pending", "attempts": 0, "output": None}},
    }
    lines = render.run_status(run).splitlines()
    assert lines[:5] == [
        f"Run:      {RUN_B}",
        "Workflow: r",
        "Status:   pending",
        "Created:  2026-11-30T09:16:13.504758Z",
        "Waiting:  for concurrency.max_runs 1 of workflow r: all 1 in use, queued at 3 "
        "(limit runs.r, place 3 in its queue, since 2026-11-30T09:16:13.506898Z)",
    ]


def test_a_rate_limited_wait_says_when_it_asks_again():
    waiting = Waiting(
        kind="limit",
        since="2026-11-30T09:15:39.210256Z",
        due="2026-11-30T09:15:43.271000Z",
        description="rate_limit of task call (2 per 5000 ms)",
        limit="rate.call",
    )
    assert waiting_view(waiting)["for"] == (
        "rate_limit of task call (2 per 5000 ms) (limit rate.call, since 2026-11-30T09:15:39.210256Z, "
        "asks again at 2026-11-30T09:15:43.271000Z)"
    )
