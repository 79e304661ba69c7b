"""The engine's gauges, sampled: actor count, inbox lag per partition, DLQ depth, tasks.

Why sampled and not counted where things happen: these figures live in
JetStream (a consumer's ``num_pending``, a stream's message count) or in the
run directory (its live actors), and asking for them costs a request each.
Every ``interval`` seconds the sampler asks, on the engine's loop, and hands
the whole sample to ``metrics.set_readings``; the metric readers (OTLP,
``/metrics``) read the last sample. A figure it cannot get this time is left
out of the sample, never a reason to stop.

The figures of the whole cluster (dead letters, tasks queued and in flight: a
listing of every task consumer) are sampled by one engine, the one holding
partition 0, not by each: the same figure from every engine would cost each a
listing and be counted as many times as there are engines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from .. import metrics
from ..wire.names import DEAD_LETTER_STREAM, INBOX_STREAM, TASK_STREAM
from .inbox import LEGACY, consumer_name

log = logging.getLogger("dagnats.metrics")

Reading = tuple[str, dict[str, str], float]
INTERVAL = 5.0  # seconds


class EngineGauges:
    def __init__(self, engine: Any, interval: float = INTERVAL) -> None:
        self.engine, self.interval = engine, interval
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="engine-gauges")

    async def stop(self) -> None:
        task = self._task
        if task is None:
            return
        # Cancelled again until it ends: a cancellation can be lost inside an await of a
        # sample (seen as a task "cancelling" in its next sleep, holding up the engine's stop).
        while not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=1.0)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            task.result()

    async def _loop(self) -> None:
        while True:
            metrics.set_readings(await self.sample())
            await asyncio.sleep(self.interval)

    def speaks_for_cluster(self) -> bool:
        leases = getattr(self.engine, "leases", None)
        return leases is None or 0 in leases.owned

    async def sample(self) -> list[Reading]:
        readings: list[Reading] = []
        parts = [self._actors, self._inbox_lag]
        if self.speaks_for_cluster():
            parts += [self._dead_letters, self._tasks]
        for part in parts:
            try:
                readings += await part()
            except Exception as err:  # noqa: BLE001 - NATS busy or reconnecting: next time
                log.debug("gauge sample %s: %s", part.__name__, err)
        return readings

    async def _actors(self) -> list[Reading]:
        return [("dagnats.actors", {}, await self.engine.live_count())]

    async def _inbox_lag(self) -> list[Reading]:
        js = self.engine.js
        out: list[Reading] = []
        for partition in sorted(self.engine.pullers):
            info = await js.consumer_info(INBOX_STREAM, consumer_name(partition))
            label = "legacy" if partition == LEGACY else str(partition)
            out.append(("dagnats.inbox.lag", {"partition": label}, info.num_pending or 0))
        return out

    async def _dead_letters(self) -> list[Reading]:
        info = await self.engine.js.stream_info(DEAD_LETTER_STREAM)
        return [("dagnats.dlq.depth", {}, info.state.messages)]

    async def _tasks(self) -> list[Reading]:
        js = self.engine.js
        stored = (await js.stream_info(TASK_STREAM)).state.messages
        in_flight = sum(c.num_ack_pending or 0 for c in await js.consumers_info(TASK_STREAM))
        return [("dagnats.tasks.in_flight", {}, in_flight), ("dagnats.tasks.queued", {}, max(0, stored - in_flight))]
