"""Approving and rejecting steps that wait for an approval.

A decision is a fact in the run's inbox (``approval.granted`` /
``approval.rejected``) for the step's current attempt, under one message id
for both kinds: the first decision wins, and a second one — even racing the
first — is refused as already decided. With a token (an approver outside,
holding the request's one-time token) the token must match the digest kept
in the ``approval_tokens`` KV; operators, through the control plane, need
none.
"""

from __future__ import annotations

import hmac
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, NotFoundError

from dagnats.domain import events as ev
from dagnats.domain.errors import ApprovalAlreadyDecided, InvalidApprovalToken, NotWaitingForApproval, StepNotFound
from dagnats.domain.identifiers import check_identifier
from dagnats.domain.state import StepStatus

from ..wire import control as wire
from ..wire.facts import publish_fact
from ..wire.names import APPROVALS_BUCKET
from .outbox import ApprovalToken, approval_key, token_digest
from .reader import RunReader


async def decide_approval(
    js: JetStreamContext, reader: RunReader, req: wire.DecideApproval, approve: bool
) -> dict[str, Any]:
    run = await reader.get(req.run_id)
    step_id = check_identifier("step id", req.step_id)
    if step_id not in run.steps:
        raise StepNotFound(run.run_id, step_id)
    state = run.step(step_id)
    if state.status != StepStatus.RUNNING or state.waiting is None or state.waiting.kind != "approval":
        raise NotWaitingForApproval(run.run_id, step_id, state.status)
    kv = await js.key_value(APPROVALS_BUCKET)
    if req.token is not None:
        await _check_token(kv, run.run_id, step_id, req.token)
    decision = ev.ApprovalDecision(comment=req.comment, reason=req.reason, by=req.by, data=req.data)
    cls: type[ev.EventBase] = ev.ApprovalGranted if approve else ev.ApprovalRejected
    fact = cls(
        run_id=run.run_id,
        step_id=step_id,
        attempt=state.attempts,
        timestamp=ev.format_timestamp(datetime.now(UTC)),
        trace_parent=run.trace_parent,
        payload=decision,
        id=f"{step_id}.{state.attempts}.approval",  # one id for either decision: the first wins
    )
    ack = await publish_fact(js, fact)  # type: ignore[arg-type]
    if ack.duplicate:
        raise ApprovalAlreadyDecided(run.run_id, step_id)
    try:
        await kv.delete(approval_key(run.run_id, step_id))
    except (KeyNotFoundError, NotFoundError):
        pass
    return {"run_id": run.run_id, "step_id": step_id, "approved": approve}


async def _check_token(kv: Any, run_id: str, step_id: str, token: str) -> None:
    try:
        entry = await kv.get(approval_key(run_id, step_id))
        record = msgspec.json.decode(entry.value or b"", type=ApprovalToken)
    except (KeyNotFoundError, NotFoundError, msgspec.DecodeError):
        raise InvalidApprovalToken(run_id, step_id) from None
    if not hmac.compare_digest(record.digest, token_digest(token)):
        raise InvalidApprovalToken(run_id, step_id)
