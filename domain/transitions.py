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

STEP_TRANSITIONS: dict[tuple[str, str], str] = {
    (st.STEP_PENDING, ev.STEP_QUEUED): st.STEP_QUEUED,
    (st.STEP_RETRYING, ev.STEP_QUEUED): st.STEP_QUEUED,
    (st.STEP_QUEUED, ev.STEP_STARTED): st.STEP_RUNNING,
    (st.STEP_QUEUED, ev.STEP_COMPLETED): st.STEP_COMPLETED,
    (st.STEP_RUNNING, ev.STEP_COMPLETED): st.STEP_COMPLETED,
    (st.STEP_QUEUED, ev.STEP_FAILED): st.STEP_FAILED,
    (st.STEP_RUNNING, ev.STEP_FAILED): st.STEP_FAILED,
    (st.STEP_FAILED, ev.STEP_RETRY_SCHEDULED): st.STEP_RETRYING,
    (st.STEP_PENDING, ev.STEP_SKIPPED): st.STEP_SKIPPED,
    (st.STEP_FAILED, ev.STEP_RECOVERED): st.STEP_RECOVERED,
}

# Events that open a new attempt rather than report on the current one.
ATTEMPT_OPENING = frozenset({ev.STEP_QUEUED})

LIVE_RUN_STATUSES = frozenset({st.RUN_RUNNING, st.RUN_PAUSING, st.RUN_PAUSED, st.RUN_COMPENSATING})

RUN_TRANSITIONS: dict[tuple[str, str], str] = {
    (st.RUN_RUNNING, ev.WORKFLOW_PAUSE_REQUESTED): st.RUN_PAUSING,
    (st.RUN_PAUSING, ev.WORKFLOW_PAUSED): st.RUN_PAUSED,
    (st.RUN_PAUSING, ev.WORKFLOW_RESUMED): st.RUN_RUNNING,
    (st.RUN_PAUSED, ev.WORKFLOW_RESUMED): st.RUN_RUNNING,
    (st.RUN_RUNNING, ev.WORKFLOW_COMPENSATING): st.RUN_COMPENSATING,
    (st.RUN_PAUSING, ev.WORKFLOW_COMPENSATING): st.RUN_COMPENSATING,
    (st.RUN_COMPENSATING, ev.WORKFLOW_COMPENSATED): st.RUN_COMPENSATED,
    (st.RUN_COMPENSATING, ev.WORKFLOW_COMPENSATE_FAILED): st.RUN_COMPENSATE_FAILED,
    **{(s, ev.WORKFLOW_COMPLETED): st.RUN_COMPLETED for s in (st.RUN_RUNNING, st.RUN_PAUSING)},
    **{(s, ev.WORKFLOW_FAILED): st.RUN_FAILED for s in LIVE_RUN_STATUSES},
    **{(s, ev.WORKFLOW_CANCELLED): st.RUN_CANCELLED for s in LIVE_RUN_STATUSES | {st.RUN_PENDING}},
}


def next_step_status(status: str, event_type: str) -> str | None:
    return STEP_TRANSITIONS.get((status, event_type))


def next_run_status(status: str, event_type: str) -> str | None:
    return RUN_TRANSITIONS.get((status, event_type))
