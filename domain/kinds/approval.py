"""approval: a person (or a system on their behalf) approves or rejects the step.

On start the request is recorded (``approval.requested``) and sent to the
config's ``subject``, with a one-time token the shell mints; ``run approve``
/ ``run reject`` (or the token's holder) put ``approval.granted`` /
``approval.rejected`` into the run's inbox. Approve completes the step with
the decision as output; reject fails it, for good; no decision before
``timeout`` fails it with "approval timed out". A decision on a step that no
longer waits changes nothing. The request is a core-NATS message, sent once
after the record: a request lost in a crash is not sent again (operators can
still decide with ``run approve``).
"""

from __future__ import annotations

from typing import Any

from .. import events as ev
from .. import state as st
from ..actions import PublishMessage
from ..decision import STARTERS, Decision
from ..definition import ApprovalConfig, StepDef
from ..timers import APPROVAL_TIMEOUT, timer
from . import on_fact, on_timer


def start(d: Decision, step: StepDef, data: Any) -> None:
    config = step.parsed_config()
    assert isinstance(config, ApprovalConfig)
    attempt = d.run.step(step.id).attempts + 1
    expires_at = d.after(int(config.timeout))
    request = ev.ApprovalRequest(
        subject=config.subject, description=config.description, metadata=config.metadata, expires_at=expires_at
    )
    d.append(ev.ApprovalRequested, step.id, attempt, request)
    d.actions.append(request_message(d.run.run_id, step.id, attempt, request, data))
    d.actions.append(timer(APPROVAL_TIMEOUT, expires_at, step.id, attempt))


def request_message(
    run_id: str, step_id: str, attempt: int, request: ev.ApprovalRequest, data: Any = None
) -> PublishMessage:
    payload = {
        "run_id": run_id,
        "step_id": step_id,
        "attempt": attempt,
        "description": request.description,
        "metadata": request.metadata or {},
        "expires_at": request.expires_at,
        "input": data,
    }
    return PublishMessage(request.subject, payload, approval_step=step_id)


@on_fact(ev.ApprovalRejected)
def _rejected(d: Decision, event: ev.ApprovalRejected) -> None:
    d.handle_failure(event.step_id)


@on_timer(APPROVAL_TIMEOUT)
def _expired(d: Decision, fire: ev.TimerFire) -> None:
    state = d.run.step(fire.step_id)
    if not (
        state.status == st.StepStatus.RUNNING
        and state.attempts == fire.attempt
        and state.waiting
        and state.waiting.kind == "approval"
    ):
        return
    failure = ev.Failure(error="approval timed out", failure_type=ev.FailureType.PERMANENT.value)
    d.append(ev.StepFailed, fire.step_id, fire.attempt, failure, event_id=f"{fire.step_id}.{fire.attempt}.expired")
    d.handle_failure(fire.step_id)


STARTERS["approval"] = start
