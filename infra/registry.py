"""The worker's side of the registry: keeps its record alive while it runs
(see ``wire.workers``; the engine asks it whether a sticky run's worker lives)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from datetime import UTC, datetime

import msgspec
from nats.js.kv import KeyValue

from dagnats.domain.events import format_timestamp

from .wire.names import WORKERS_BUCKET
from .wire.workers import HEARTBEAT, WorkerRecord

log = logging.getLogger("dagnats.registry")


class Heartbeat:
    """Keeps one worker's record alive while the worker runs."""

    def __init__(
        self, js, worker_id: str, tasks: list[str], groups: list[str], capabilities: list[str] | None = None
    ) -> None:
        self.js, self.worker_id, self.tasks, self.groups = js, worker_id, tasks, groups
        self.capabilities = capabilities or []
        self._task: asyncio.Task | None = None
        self._kv: KeyValue | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._beat(), name=f"heartbeat-{self.worker_id}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # Bounded: a put in flight may not finish promptly on cancellation, and a
            # stopping worker must exit (seen: SIGTERM drained, then the process hung).
            await asyncio.wait([self._task], timeout=1.0)
        if self._kv is None:
            return
        try:  # bounded: a stopping worker must not wait on a slow server
            await asyncio.wait_for(self._kv.delete(self.worker_id), 1.0)
        except Exception as err:  # the key expires by itself anyway
            log.debug("worker %s: could not remove its record: %s", self.worker_id, err)

    async def _beat(self) -> None:
        while True:
            try:
                kv = self._kv = self._kv or await self.js.key_value(WORKERS_BUCKET)
                record = WorkerRecord(
                    self.worker_id,
                    self.tasks,
                    self.groups,
                    os.getpid(),
                    socket.gethostname(),
                    format_timestamp(datetime.now(UTC)),
                    self.capabilities,
                )
                await kv.put(self.worker_id, msgspec.json.encode(record))
            except asyncio.CancelledError:
                raise
            except Exception as err:  # no bucket yet (engine not started), reconnecting, ...
                log.debug("worker %s heartbeat failed: %s", self.worker_id, err)
                self._kv = None
            await asyncio.sleep(HEARTBEAT)
