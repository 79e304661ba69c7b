"""The event correlator: matches external events against runs' cancel_on.

``dagnats event publish NAME DATA`` stores an event on ``event.<NAME>``
(stream EVENTS). One durable consumer reads them; for each it looks up the
waiters registered under that event name, and for each live run whose match
holds it publishes a cancel fact into the run's inbox. Waiters of finished
runs, expired waiters and consumed ones are deleted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import api

from dagnats.domain.events import parse_timestamp
from dagnats.domain.state import RunStatus

from ..wire.names import EVENT_STREAM, WAITERS_BUCKET
from ..wire.reading import kv_entries
from .admission import Waiter, waiter_matches

log = logging.getLogger("dagnats.correlator")
CONSUMER = "correlator"
_WAITER = msgspec.json.Decoder(Waiter)

StatusOf = Callable[[str], Awaitable[RunStatus | None]]
Cancel = Callable[[str, str, str], Awaitable[None]]


class Correlator:
    def __init__(self, js, status_of: StatusOf, cancel: Cancel) -> None:
        self.js, self.status_of, self.cancel = js, status_of, cancel
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self.waiters = await self.js.key_value(WAITERS_BUCKET)
        self._sub = await self.js.pull_subscribe(
            "event.>",
            durable=CONSUMER,
            stream=EVENT_STREAM,
            config=api.ConsumerConfig(ack_wait=30, max_deliver=-1, deliver_policy=api.DeliverPolicy.NEW),
        )
        self._task = asyncio.create_task(self._consume(), name="correlator")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=2.0)
        try:
            await self._sub.unsubscribe()
        except Exception as err:  # shutting down
            log.debug("correlator unsubscribe: %s", err)

    async def _consume(self) -> None:
        while True:
            try:
                msgs = await self._sub.fetch(64, timeout=1.0)
            except (TimeoutError, NatsTimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as err:
                log.warning("event fetch failed: %s", err)
                await asyncio.sleep(0.5)
                continue
            for msg in msgs:
                try:
                    await self._handle(msg)
                    await msg.ack()
                except Exception as err:
                    log.warning("event %s not correlated yet: %s", msg.subject, err)
                    await msg.nak(delay=1)

    async def _handle(self, msg: Msg) -> None:
        name = msg.subject.split(".", 1)[1]
        try:
            data: Any = msgspec.json.decode(msg.data) if msg.data else None
        except msgspec.DecodeError:
            data = msg.data.decode(errors="replace")
        sent_at = msg.metadata.timestamp if msg.metadata else datetime.now(UTC)
        for key, raw in await kv_entries(self.js, WAITERS_BUCKET, f"{name}.>"):
            waiter = _WAITER.decode(raw)
            status = await self.status_of(waiter.run_id)
            if status is None or RunStatus(status).is_terminal or _expired(waiter, sent_at):
                await self.waiters.delete(key)
                continue
            if waiter_matches(waiter, data):
                await self.cancel(
                    waiter.run_id, f"cancelled by event {name}", f"cancel-on.{name}.{msg.metadata.sequence.stream}"
                )
                await self.waiters.delete(key)


def _expired(waiter: Waiter, at: datetime) -> bool:
    return bool(waiter.expires_at) and at > parse_timestamp(waiter.expires_at)
