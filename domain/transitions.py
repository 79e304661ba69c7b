"""Status machines as tables.

Theory of operation: a step event applies only to the attempt it names
(``event.attempt == step.attempts``; ``step.queued`` opens a new, higher
attempt) and only where the table has a cell for (current status, event
type). Everything else is a duplicate, a stale report from an earlier
attempt, or a late report after the step moved on: ``fold`` leaves the
state unchanged. Run events apply only while the run is not terminal.
"""

from __future__ import annotations

from . import events as ev
from . import state as st

STEP_TRANSITIONS: dict[tuple[st.StepStatus, str], st.StepStatus] = {
    (st.StepStatus.PENDING, ev.STEP_QUEUED): st.StepStatus.QUEUED,
    (st.StepStatus.RETRYING, ev.STEP_QUEUED): st.StepStatus.QUEUED,
    (st.StepStatus.QUEUED, ev.STEP_STARTED): st.StepStatus.RUNNING,
    (st.StepStatus.QUEUED, ev.STEP_COMPLETED): st.StepStatus.COMPLETED,
    (st.StepStatus.RUNNING, ev.STEP_COMPLETED): st.StepStatus.COMPLETED,
    (st.StepStatus.QUEUED, ev.STEP_FAILED): st.StepStatus.FAILED,
    (st.StepStatus.RUNNING, ev.STEP_FAILED): st.StepStatus.FAILED,
    (st.StepStatus.FAILED, ev.STEP_RETRY_SCHEDULED): st.StepStatus.RETRYING,
    (st.StepStatus.PENDING, ev.STEP_SKIPPED): st.StepStatus.SKIPPED,
    (st.StepStatus.FAILED, ev.STEP_RECOVERED): st.StepStatus.RECOVERED,
    # An operator's replay: the failed step waits for its next attempt, as after a retry.
    (st.StepStatus.FAILED, ev.STEP_REPLAYED): st.StepStatus.RETRYING,
    # A handler that reports what it waits for (a signal) is running; one that adds
    # steps is still in flight.
    (st.StepStatus.QUEUED, ev.STEP_WAITING): st.StepStatus.RUNNING,
    (st.StepStatus.RUNNING, ev.STEP_WAITING): st.StepStatus.RUNNING,
    (st.StepStatus.QUEUED, ev.STEPS_ADDED): st.StepStatus.QUEUED,
    (st.StepStatus.RUNNING, ev.STEPS_ADDED): st.StepStatus.RUNNING,
    # agent_loop: Continue ends an iteration; the next one is queued (after loop_delay).
    (st.StepStatus.QUEUED, ev.STEP_CONTINUE): st.StepStatus.CONTINUING,
    (st.StepStatus.RUNNING, ev.STEP_CONTINUE): st.StepStatus.CONTINUING,
    (st.StepStatus.CONTINUING, ev.STEP_QUEUED): st.StepStatus.QUEUED,
    (st.StepStatus.CONTINUING, ev.STEP_FAILED): st.StepStatus.FAILED,
    # Steps the engine runs itself: they open an attempt running, and end on what they wait for.
    (st.StepStatus.PENDING, ev.STEP_SLEEP_STARTED): st.StepStatus.RUNNING,
    (st.StepStatus.RETRYING, ev.STEP_SLEEP_STARTED): st.StepStatus.RUNNING,
    (st.StepStatus.RUNNING, ev.STEP_SLEEP_COMPLETED): st.StepStatus.COMPLETED,
    (st.StepStatus.PENDING, ev.APPROVAL_REQUESTED): st.StepStatus.RUNNING,
    (st.StepStatus.RETRYING, ev.APPROVAL_REQUESTED): st.StepStatus.RUNNING,
    (st.StepStatus.RUNNING, ev.APPROVAL_GRANTED): st.StepStatus.COMPLETED,
    (st.StepStatus.RUNNING, ev.APPROVAL_REJECTED): st.StepStatus.FAILED,
    (st.StepStatus.PENDING, ev.STEP_WAIT_STARTED): st.StepStatus.RUNNING,
    (st.StepStatus.RETRYING, ev.STEP_WAIT_STARTED): st.StepStatus.RUNNING,
    (st.StepStatus.RUNNING, ev.STEP_WAIT_MATCHED): st.StepStatus.COMPLETED,
    (st.StepStatus.RUNNING, ev.STEP_WAIT_TIMED_OUT): st.StepStatus.COMPLETED,
    (st.StepStatus.PENDING, ev.CHILD_STARTED): st.StepStatus.RUNNING,
    (st.StepStatus.RETRYING, ev.CHILD_STARTED): st.StepStatus.RUNNING,
    (st.StepStatus.RUNNING, ev.CHILD_COMPLETED): st.StepStatus.COMPLETED,
    (st.StepStatus.RUNNING, ev.CHILD_FAILED): st.StepStatus.FAILED,
    (st.StepStatus.PENDING, ev.STEP_MAP_STARTED): st.StepStatus.RUNNING,
    (st.StepStatus.RETRYING, ev.STEP_MAP_STARTED): st.StepStatus.RUNNING,
    (st.StepStatus.RUNNING, ev.STEP_MAP_COMPLETED): st.StepStatus.COMPLETED,
    # planner: its plan (a completion) becomes steps of the run, which it then waits for.
    (st.StepStatus.COMPLETED, ev.PLANNER_MATERIALIZED): st.StepStatus.RUNNING,
    (st.StepStatus.COMPLETED, ev.PLANNER_REJECTED): st.StepStatus.FAILED,
    (st.StepStatus.RUNNING, ev.PLANNER_COMPLETED): st.StepStatus.COMPLETED,
    # Flow control: a ready step (or a retry) waits for admission, then starts as usual.
    (st.StepStatus.PENDING, ev.STEP_HELD): st.StepStatus.WAITING,
    (st.StepStatus.RETRYING, ev.STEP_HELD): st.StepStatus.WAITING,
    (st.StepStatus.CONTINUING, ev.STEP_HELD): st.StepStatus.WAITING,
    (st.StepStatus.WAITING, ev.STEP_LIMITED): st.StepStatus.WAITING,
    (st.StepStatus.WAITING, ev.STEP_ADMITTED): st.StepStatus.WAITING,
    **{(st.StepStatus.WAITING, opening): st.StepStatus.QUEUED for opening in (ev.STEP_QUEUED,)},
    **{
        (st.StepStatus.WAITING, opening): st.StepStatus.RUNNING
        for opening in (
            ev.STEP_SLEEP_STARTED,
            ev.APPROVAL_REQUESTED,
            ev.STEP_WAIT_STARTED,
            ev.CHILD_STARTED,
            ev.STEP_MAP_STARTED,
        )
    },
}

# Admission facts name the attempt a held step will start as (its next one).
ADMISSION = frozenset({ev.STEP_HELD, ev.STEP_LIMITED, ev.STEP_ADMITTED})

# Events that open a new attempt rather than report on the current one.
ATTEMPT_OPENING = frozenset(
    {
        ev.STEP_QUEUED,
        ev.STEP_SLEEP_STARTED,
        ev.APPROVAL_REQUESTED,
        ev.STEP_WAIT_STARTED,
        ev.CHILD_STARTED,
        ev.STEP_MAP_STARTED,
    }
)

RUN_TRANSITIONS: dict[tuple[st.RunStatus, str], st.RunStatus] = {
    (st.RunStatus.PENDING, ev.RUN_LIMITED): st.RunStatus.PENDING,
    (st.RunStatus.PENDING, ev.RUN_ADMITTED): st.RunStatus.RUNNING,
    (st.RunStatus.RUNNING, ev.WORKFLOW_PAUSE_REQUESTED): st.RunStatus.PAUSING,
    (st.RunStatus.PAUSING, ev.WORKFLOW_PAUSED): st.RunStatus.PAUSED,
    (st.RunStatus.PAUSING, ev.WORKFLOW_RESUMED): st.RunStatus.RUNNING,
    (st.RunStatus.PAUSED, ev.WORKFLOW_RESUMED): st.RunStatus.RUNNING,
    (st.RunStatus.RUNNING, ev.WORKFLOW_COMPENSATING): st.RunStatus.COMPENSATING,
    (st.RunStatus.PAUSING, ev.WORKFLOW_COMPENSATING): st.RunStatus.COMPENSATING,
    (st.RunStatus.COMPENSATING, ev.WORKFLOW_COMPENSATED): st.RunStatus.COMPENSATED,
    (st.RunStatus.COMPENSATING, ev.WORKFLOW_COMPENSATE_FAILED): st.RunStatus.COMPENSATE_FAILED,
    **{(s, ev.WORKFLOW_COMPLETED): st.RunStatus.COMPLETED for s in (st.RunStatus.RUNNING, st.RunStatus.PAUSING)},
    **{(s, ev.WORKFLOW_FAILED): st.RunStatus.FAILED for s in st.LIVE_RUN_STATUSES},
    **{(s, ev.WORKFLOW_CANCELLED): st.RunStatus.CANCELLED for s in st.LIVE_RUN_STATUSES | {st.RunStatus.PENDING}},
}


def next_step_status(status: st.StepStatus, event_type: str) -> st.StepStatus | None:
    return STEP_TRANSITIONS.get((status, event_type))


def next_run_status(status: st.RunStatus, event_type: str) -> st.RunStatus | None:
    return RUN_TRANSITIONS.get((status, event_type))


# Events after which a run has ended (each leads to a terminal status).
ENDING_EVENTS = frozenset(event for (_, event), status in RUN_TRANSITIONS.items() if status.is_terminal)
