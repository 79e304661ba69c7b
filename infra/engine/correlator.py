"""The event correlator: hands external events to the runs waiting for them.

``dagnats event publish NAME DATA`` stores an event on ``event.<NAME>``
(stream EVENTS). One durable consumer, shared by every engine, reads them;
for each it looks up the candidate waiters in the index (``waiters.py``)
and, for each one whose match holds:

    wait_for_event step -> step.wait.matched into the run's inbox -> purge the waiter
    cancel_on entry     -> cancel the run                          -> purge the waiter

Waiters that expired before the event are purged on sight, and so are
matching waiters of runs that are finished or gone. A waiter whose value
never comes up is never looked up, so a periodic sweep purges the rest of
those. Every step is idempotent (a fact's id is its identity in the inbox,
a purge of nothing is no error), so an event redelivered after a crash
changes nothing twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from dagnats.domain import events as ev
from dagnats.domain.identifiers import is_identifier
from dagnats.domain.state import RunStatus

from ..wire.facts import publish_fact
from ..wire.names import EVENT_STREAM
from ..wire.reading import let_go, pulled
from .waiters import Waiter, candidates, event_data, matched_fact, purge_waiters, waiters_of

log = logging.getLogger("dagnats.correlator")
CONSUMER = "correlator"
SWEEP_INTERVAL = 300.0
# How long a cancel_on waiter's run may stay unknown before it counts as gone.
START_GRACE = timedelta(seconds=60)

StatusOf = Callable[[str], Awaitable[RunStatus | None]]
# (run id, reason, fact id)
Cancel = Callable[[str, str, str], Awaitable[None]]


class Correlator:
    def __init__(
        self, js: JetStreamContext, status_of: StatusOf, cancel: Cancel, sweep_every: float = SWEEP_INTERVAL
    ) -> None:
        self.js, self.status_of, self.cancel = js, status_of, cancel
        self.sweep_every = sweep_every
        self._tasks: list[asyncio.Task] = []
        self._stopping = False

    async def start(self) -> None:
        self._sub = await self.js.pull_subscribe(
            "event.>",
            durable=CONSUMER,
            stream=EVENT_STREAM,
            config=api.ConsumerConfig(ack_wait=30, max_deliver=-1, deliver_policy=api.DeliverPolicy.NEW),
        )
        self._tasks = [
            asyncio.create_task(self._consume(), name="correlator"),
            asyncio.create_task(self._sweep_periodically(), name="correlator-sweep"),
        ]

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)
        await let_go(self._sub, "the event correlator", log)

    async def _consume(self) -> None:
        while not self._stopping:
            msgs = await pulled(self._sub, 64, "event fetch", log)
            if msgs is None:
                return
            for msg in msgs:
                try:
                    await self._handle(msg)
                    await msg.ack()
                except Exception as err:
                    log.warning("event %s not correlated yet: %s", msg.subject, err)
                    await msg.nak(delay=1)

    async def _handle(self, msg: Msg) -> None:
        name = msg.subject.split(".", 1)[1]
        if not is_identifier(name):  # not an event name: it could not index anything
            log.warning("ignoring event on %s: not a valid event name", msg.subject)
            return
        meta = msg.metadata
        await self.correlate(name, event_data(msg.data), meta.timestamp, meta.sequence.stream)

    async def correlate(self, name: str, data: Any, at: datetime, seq: int) -> int:
        """Hand event ``name`` (``data``, published at ``at`` as stream sequence ``seq``)
        to every waiter it matches; returns how many it was handed to."""
        handed = 0
        for key, waiter in await candidates(self.js, name, data):
            if waiter.expired(at):
                await purge_waiters(self.js, key)
            elif waiter.matches(data, at):
                status = await self.status_of(waiter.run_id)
                if _live(status):
                    await self._hand(waiter, data, seq)
                    handed += 1
                if _live(status) or _gone(waiter, status, at):
                    await purge_waiters(self.js, key)
        return handed

    async def _hand(self, waiter: Waiter, data: Any, seq: int) -> None:
        if waiter.cancels:
            reason = f"cancelled by event {waiter.event}"
            await self.cancel(waiter.run_id, reason, f"cancel-on.{waiter.event}.{seq}")
            return
        await publish_fact(self.js, matched_fact(waiter, data, seq))

    # ---- the sweep ----------------------------------------------------------------------

    async def _sweep_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_every)
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as err:
                log.warning("waiter sweep failed: %s", err)

    async def sweep(self, now: datetime | None = None) -> int:
        """Purge the waiters that expired or whose runs are finished or gone; returns how many."""
        now = now or datetime.now(UTC)
        statuses: dict[str, RunStatus | None] = {}
        purged = 0
        for key, waiter in await waiters_of(self.js):
            if waiter.run_id not in statuses:
                statuses[waiter.run_id] = await self.status_of(waiter.run_id)
            status = statuses[waiter.run_id]
            if waiter.expired(now) or (not _live(status) and _gone(waiter, status, now)):
                await purge_waiters(self.js, key)
                purged += 1
        return purged


def _live(status: RunStatus | None) -> bool:
    return status is not None and not RunStatus(status).is_terminal


def _gone(waiter: Waiter, status: RunStatus | None, at: datetime) -> bool:
    """Whether a run that is not live never will be: finished, or unknown past START_GRACE
    (a cancel_on waiter is stored just before its run's start is published)."""
    if status is not None or not waiter.cancels or not waiter.since:
        return True
    return at - ev.parse_timestamp(waiter.since) >= START_GRACE
