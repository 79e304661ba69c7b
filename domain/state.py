"""Run state: what folding a run's history produces.

``WorkflowRun`` and ``StepState`` are frozen; ``fold`` returns new values.
The run carries the definition it was started with, so replaying a history
never depends on what is registered today.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .definition import WorkflowDef

RUN_PENDING = "pending"
RUN_RUNNING = "running"
RUN_PAUSING = "pausing"
RUN_PAUSED = "paused"
RUN_COMPLETED = "completed"
RUN_FAILED = "failed"
RUN_CANCELLED = "cancelled"
RUN_COMPENSATING = "compensating"
RUN_COMPENSATED = "compensated"
RUN_COMPENSATE_FAILED = "compensate_failed"
TERMINAL_RUN_STATUSES = frozenset(
    {RUN_COMPLETED, RUN_FAILED, RUN_CANCELLED, RUN_COMPENSATED, RUN_COMPENSATE_FAILED}
)

STEP_PENDING = "pending"
STEP_QUEUED = "queued"
STEP_RUNNING = "running"
STEP_RETRYING = "retrying"
STEP_COMPLETED = "completed"
STEP_FAILED = "failed"
STEP_SKIPPED = "skipped"
STEP_CANCELLED = "cancelled"
STEP_RECOVERED = "recovered"
# A dependency counts as satisfied in any of these.
DONE_STEP_STATUSES = frozenset({STEP_COMPLETED, STEP_SKIPPED, STEP_RECOVERED})
TERMINAL_STEP_STATUSES = frozenset(
    {STEP_COMPLETED, STEP_FAILED, STEP_SKIPPED, STEP_CANCELLED, STEP_RECOVERED}
)
IN_FLIGHT_STEP_STATUSES = frozenset({STEP_QUEUED, STEP_RUNNING})


class StepState(msgspec.Struct, frozen=True, omit_defaults=True):
    status: str = STEP_PENDING
    attempts: int = 0
    output: Any = None
    error: str = ""
    failure_type: str = ""
    task: str = ""
    input: Any = None
    worker_id: str = ""
    queued_at: str = ""
    started_at: str = ""
    finished_at: str = ""
    retry_at: str = ""
    # A skip caused by an upstream failure spreads to dependents; a skip_if
    # (or on_failure) skip satisfies them.
    skip_cascade: bool = False
    skip_reason: str = ""
    # Order of completion within the run (sagas compensate in reverse).
    completed_order: int = 0


class WorkflowRun(msgspec.Struct, frozen=True, omit_defaults=True):
    run_id: str
    workflow: str = ""
    status: str = RUN_PENDING
    steps: dict[str, StepState] = {}
    input: Any = None
    output: Any = None
    error: str = ""
    created_at: str = ""
    started_at: str = ""
    completed_at: str = ""
    trace_parent: str = ""
    definition: WorkflowDef | None = None
    completions: int = 0
    sticky_worker: str = ""
    # Saga: the steps still to compensate (in order) and what triggered it.
    compensation: tuple[str, ...] = ()
    trigger_step: str = ""
    trigger_error: str = ""

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_RUN_STATUSES

    def step(self, step_id: str) -> StepState:
        return self.steps.get(step_id, _PENDING)


_PENDING = StepState()


def new_run(run_id: str) -> WorkflowRun:
    """The state of a run before its ``workflow.started`` event."""
    return WorkflowRun(run_id=run_id)


RUN_ENCODER = msgspec.json.Encoder()
RUN_DECODER = msgspec.json.Decoder(WorkflowRun)
