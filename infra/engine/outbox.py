"""What a run's record asks of the world beyond its own tasks and timers.

- ``PublishMessage``: a core-NATS message (an approval request, a respond step's answer). For an
  approval the outbox mints the one-time token that approves it, keeps its
  digest in the ``approval_tokens`` KV and puts the token in the message.
- ``RegisterWaiter`` / ``RemoveWaiter``: the event waiters the correlator
  looks up (``waiters.py``).
- ``StartChildRun``: a sub_workflow's child, started through the control
  plane's own admission (``ChildStarter``); a child that cannot start fails
  the parent step with the reason.
- ``PublishFact``: a fact for another run's inbox (a child's outcome to its
  parent, a cancel to a child).
- ``DeadLetter`` / ``DiscardDeadLetters``: a step's dead letter kept, or its
  dead letters dropped once a replay completed it (``dead_letters.py``).

Each is idempotent, so a rebuilt run that asks again does no harm.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.aio.client import Client as NATS

from dagnats.domain import events as ev
from dagnats.domain.actions import (
    Action,
    DeadLetter,
    DiscardDeadLetters,
    PublishFact,
    PublishMessage,
    RegisterWaiter,
    RemoveWaiter,
    StartChildRun,
)
from dagnats.domain.errors import DagnatsError

from ..wire.facts import publish_fact
from ..wire.names import APPROVALS_BUCKET
from .bridge import LoopBridge
from .dead_letters import discard_dead_letters, record_dead_letter
from .waiters import register_step_waiter, remove_step_waiter

log = logging.getLogger("dagnats.outbox")

# (action, parent run id, its trace parent) -> the child's run id; raises a DagnatsError
ChildStarter = Callable[[StartChildRun, str, str], Awaitable[Any]]

_ENCODER = msgspec.json.Encoder()

# How long a child's start waits for the control plane to come up (the bridge
# that carries the actor's call gives up after 30 s).
CHILD_STARTER_WAIT = 10.0


class ApprovalToken(msgspec.Struct, frozen=True):
    digest: str
    attempt: int
    expires_at: str


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def approval_key(run_id: str, step_id: str) -> str:
    return f"{run_id}.{step_id}"


class NatsOutbox:
    def __init__(self, nc: NATS, bridge: LoopBridge) -> None:
        self.nc, self.bridge = nc, bridge
        self.js = nc.jetstream()
        self._start_child: ChildStarter | None = None
        self._starter_set = asyncio.Event()

    @property
    def start_child(self) -> ChildStarter | None:
        return self._start_child

    @start_child.setter
    def start_child(self, starter: ChildStarter) -> None:
        """Set by the control plane once it is up (it needs the engine's reader)."""
        self._start_child = starter
        self._starter_set.set()

    def send(self, run_id: str, actions: Sequence[Action], trace_parent: str) -> None:
        self.bridge.call(self._send(run_id, actions, trace_parent))

    async def _send(self, run_id: str, actions: Sequence[Action], trace_parent: str) -> None:
        for action in actions:
            if isinstance(action, PublishMessage):
                await self._message(run_id, action)
            elif isinstance(action, RegisterWaiter):
                await register_step_waiter(self.js, run_id, action)
            elif isinstance(action, RemoveWaiter):
                await remove_step_waiter(self.js, run_id, action)
            elif isinstance(action, StartChildRun):
                await self._child(run_id, action, trace_parent)
            elif isinstance(action, PublishFact):
                await publish_fact(self.js, action.event)
            elif isinstance(action, DeadLetter):
                await record_dead_letter(self.js, action)
            elif isinstance(action, DiscardDeadLetters):
                await discard_dead_letters(self.js, action)

    async def _message(self, run_id: str, action: PublishMessage) -> None:
        payload = dict(action.payload)
        if action.approval_step:
            token = secrets.token_hex(32)
            record = ApprovalToken(token_digest(token), int(payload.get("attempt", 0)), str(payload["expires_at"]))
            kv = await self.js.key_value(APPROVALS_BUCKET)
            await kv.put(approval_key(run_id, action.approval_step), _ENCODER.encode(record))
            payload["token"] = token
        try:
            await self.nc.publish(action.subject, _ENCODER.encode(payload))
        except Exception as err:  # noqa: BLE001 - a notification: the step has its record
            log.warning("run %s: could not send a message on %s: %s", run_id, action.subject, err)

    async def _child(self, run_id: str, action: StartChildRun, trace_parent: str) -> None:
        # The engine recovers its unfinished runs and reads its inbox before the control
        # plane is up: a parent rebuilt then waits for it here rather than crash (its
        # recovery, the only thing that starts a child lost in a crash, would be lost).
        try:
            await asyncio.wait_for(self._starter_set.wait(), CHILD_STARTER_WAIT)
        except TimeoutError:
            raise RuntimeError("no control plane to start child runs with") from None
        assert self._start_child is not None
        try:
            await self._start_child(action, run_id, trace_parent)
        except DagnatsError as err:
            if action.detach:
                log.warning("run %s: detached child %s did not start: %s", run_id, action.child_run_id, err)
                return
            result = ev.ChildResult(child_run_id=action.child_run_id, status="not started", error=str(err))
            fact = ev.ChildFailed(
                run_id=run_id,
                step_id=action.parent_step_id,
                attempt=action.attempt,
                payload=result,
                timestamp=ev.format_timestamp(datetime.now(UTC)),
                trace_parent=trace_parent,
                id=f"child.{action.child_run_id}.refused",
            )
            await publish_fact(self.js, fact)
