"""A worker offering capabilities follows the registered definitions.

For every step of a task the worker handles whose ``required_capabilities``
it offers (in a group it is in, if the step names one), the worker needs one
more shared consumer on that capability set's own subject. The follower
watches the ``workflow_defs`` KV and hands each such (task, group, set) to
``adopt``; definitions registered after the worker started count too. It
watches afresh after a failure or a reconnect (the server may have lost the
watch's consumer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from nats.js import JetStreamContext

from dagnats.domain.capabilities import capability_routes
from dagnats.domain.definition import decode_workflow
from dagnats.domain.errors import DefinitionDecodeError

from .task_context import describe, settle
from .wire.names import DEFS_BUCKET

log = logging.getLogger("dagnats.worker")

DEFINITIONS_WAIT = 5.0  # seconds start() waits for the registered definitions (capability sets)

Adopt = Callable[[str, str | None, tuple[str, ...]], Awaitable[None]]


class DefinitionFollower:
    def __init__(
        self,
        js: JetStreamContext,
        worker_id: str,
        routes: tuple[list[str], list[str], Iterable[str]],
        adopt: Adopt,
        pause: Callable[[int], Awaitable[None]],
    ) -> None:
        """``routes``: the worker's (tasks, groups, capabilities); ``adopt(task, group, set)``
        ensures a consumer; ``pause(failures)`` backs off (returning early on a stop)."""
        self.js, self.worker_id, self.adopt, self.pause = js, worker_id, adopt, pause
        self.tasks, self.groups, self.capabilities = routes
        self._stopping = False
        self._rewatch = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Follow the definitions; returns once those already there are adopted (or at
        once if they cannot be read yet: the follower keeps trying)."""
        ready = asyncio.Event()
        self._task = asyncio.create_task(self._follow(ready), name=f"definitions-{self.worker_id}")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(ready.wait(), DEFINITIONS_WAIT)

    async def stop(self, timeout: float) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=timeout)
            self._task = None

    def rewatch(self) -> None:
        """Watch afresh (after a reconnect)."""
        self._rewatch.set()

    async def _follow(self, ready: asyncio.Event) -> None:
        failures = 0
        while not self._stopping:
            self._rewatch.clear()
            try:
                watcher = await (await self.js.key_value(DEFS_BUCKET)).watchall()
            except Exception as err:  # noqa: BLE001 - no bucket yet (engine not started), reconnecting, ...
                ready.set()
                failures += 1
                log.log(
                    logging.DEBUG if failures > 1 else logging.INFO,
                    "worker %s cannot watch %s (%s); retrying",
                    self.worker_id,
                    DEFS_BUCKET,
                    describe(err),
                )
                await self.pause(failures)
                continue
            failures = 0
            try:
                await self._adopt_from(watcher, ready)
            finally:
                await settle(watcher.stop())

    async def _adopt_from(self, watcher: Any, ready: asyncio.Event) -> None:
        """Adopt each definition the watch reports, until it ends or a reconnect asks
        for a fresh one."""
        rewatch = asyncio.create_task(self._rewatch.wait())
        entry_next: asyncio.Future[Any] | None = None
        try:
            while not self._stopping:
                entry_next = asyncio.ensure_future(watcher.__anext__())
                await asyncio.wait([entry_next, rewatch], return_when=asyncio.FIRST_COMPLETED)
                if not entry_next.done():
                    return
                entry = entry_next.result()
                if entry is None:  # the end of the definitions already there
                    ready.set()
                elif entry.operation not in ("DEL", "PURGE") and entry.value:
                    await self._adopt_definition(entry.key, entry.value)
        except StopAsyncIteration:  # the watch was stopped
            return
        finally:
            for waiting in (rewatch, entry_next):
                if waiting is not None and not waiting.cancel() and not waiting.cancelled():
                    waiting.exception()  # done already: its outcome is of no interest now

    async def _adopt_definition(self, name: str, data: bytes) -> None:
        """Hand over each capability set of ``name`` this worker may take.

        Consumers are never removed here: a definition deleted or changed may still
        have tasks queued on its old subjects."""
        try:
            wf = decode_workflow(data, f"stored workflow {name}")
        except DefinitionDecodeError as err:
            log.debug("worker %s ignores definition %s: %s", self.worker_id, name, err)
            return
        for task, group, caps in sorted(capability_routes(wf, self.tasks, self.groups, self.capabilities)):
            await self.adopt(task, group or None, caps)
