"""Run state: what folding a run's history produces.

``WorkflowRun`` and ``StepState`` are frozen; ``fold`` returns new values.
The run carries the definition it was started with, so replaying a history
never depends on what is registered today.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import msgspec

from .definition import WorkflowDef


class RunStatus(StrEnum):
    """A run's status; the last five are terminal."""

    PENDING = "pending"
    RUNNING = "running"
    PAUSING = "pausing"
    PAUSED = "paused"
    COMPENSATING = "compensating"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    COMPENSATED = "compensated"
    COMPENSATE_FAILED = "compensate_failed"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_RUN_STATUSES


TERMINAL_RUN_STATUSES = frozenset(
    {
        RunStatus.COMPLETED,
        RunStatus.FAILED,
        RunStatus.CANCELLED,
        RunStatus.COMPENSATED,
        RunStatus.COMPENSATE_FAILED,
    }
)
# A run in one of these still moves: its steps run, or it compensates.
LIVE_RUN_STATUSES = frozenset({RunStatus.RUNNING, RunStatus.PAUSING, RunStatus.PAUSED, RunStatus.COMPENSATING})


class StepStatus(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    # An agent loop between iterations: its next one is queued after loop_delay.
    CONTINUING = "continuing"
    # Ready, but held by a limit (a rate, a concurrency slot) until admitted.
    WAITING = "waiting"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"
    RECOVERED = "recovered"


# A dependency counts as satisfied in any of these.
DONE_STEP_STATUSES = frozenset({StepStatus.COMPLETED, StepStatus.SKIPPED, StepStatus.RECOVERED})
TERMINAL_STEP_STATUSES = DONE_STEP_STATUSES | {StepStatus.FAILED, StepStatus.CANCELLED}
IN_FLIGHT_STEP_STATUSES = frozenset({StepStatus.QUEUED, StepStatus.RUNNING})
# Attempts that may hold concurrency slots.
HOLDING_STEP_STATUSES = frozenset({StepStatus.WAITING, StepStatus.QUEUED, StepStatus.RUNNING})


class Waiting(msgspec.Struct, frozen=True, omit_defaults=True):
    """What a running step that no worker holds waits for."""

    kind: str  # sleep | approval | event | child | signal | instances | fragment | limit
    since: str = ""
    due: str = ""  # when it wakes, or gives up
    event: str = ""  # wait_for_event: the event name; signal: the signal name
    match: dict[str, Any] | None = None  # wait_for_event: left, op and the resolved right
    subject: str = ""  # approval: where the request went
    description: str = ""
    child_run_id: str = ""
    # limit: the key that holds it, and its place in that key's queue (1 = next)
    limit: str = ""
    position: int = 0


class StepState(msgspec.Struct, frozen=True, omit_defaults=True):
    status: StepStatus = StepStatus.PENDING
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
    waiting: Waiting | None = None
    # agent_loop: iterations finished with Continue, and when the first began.
    iterations: int = 0
    loop_started_at: str = ""
    # map: one state per element of the input array, in order.
    instances: tuple[StepState, ...] = ()
    # planner: the ids of the steps it added to the run.
    fragment: tuple[str, ...] = ()
    # Flow control: the slots this attempt holds (pool keys), once admitted.
    holds: tuple[str, ...] = ()
    admitted: bool = False
    # Times an operator replayed the step after it failed for good (its dead letters).
    replays: int = 0


class WorkflowRun(msgspec.Struct, frozen=True, omit_defaults=True):
    run_id: str
    workflow: str = ""
    status: RunStatus = RunStatus.PENDING
    steps: dict[str, StepState] = {}
    input: Any = None
    output: Any = None
    error: str = ""
    created_at: str = ""
    started_at: str = ""
    completed_at: str = ""
    trace_parent: str = ""
    trace_state: str = ""
    baggage: str = ""
    # Callers' traceparents of starts answered with this run (at most MAX_LINKED_STARTS).
    linked_starts: tuple[str, ...] = ()
    definition: WorkflowDef | None = None
    completions: int = 0
    sticky_worker: str = ""
    # Saga: the steps still to compensate (in order) and what triggered it.
    compensation: tuple[str, ...] = ()
    trigger_step: str = ""
    trigger_error: str = ""
    # A child run (sub_workflow): who started it, and the tree's root (empty for a root).
    parent_run_id: str = ""
    parent_step_id: str = ""
    parent_attempt: int = 0
    root_run_id: str = ""
    depth: int = 0
    # Steps added while the run ran (planners, handlers); the definition holds them.
    dynamic_steps: tuple[str, ...] = ()
    # Flow control of the run itself (concurrency.max_runs): what it waits for, what it holds.
    waiting: Waiting | None = None
    holds: tuple[str, ...] = ()

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_RUN_STATUSES

    @property
    def root(self) -> str:
        """The run at the top of this run's tree of sub_workflows (itself, unless a child)."""
        return self.root_run_id or self.run_id

    def step(self, step_id: str) -> StepState:
        return self.steps.get(step_id, _PENDING)


_PENDING = StepState()


def new_run(run_id: str) -> WorkflowRun:
    """The state of a run before its ``workflow.started`` event."""
    return WorkflowRun(run_id=run_id)


RUN_ENCODER = msgspec.json.Encoder()
RUN_DECODER = msgspec.json.Decoder(WorkflowRun)
