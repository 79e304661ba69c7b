"""Registered workflow definitions: the workflow_defs KV, cached.

Starting a run must not cost a KV read, so every engine keeps the decoded
definitions in memory and follows the bucket with a watch: a definition
registered or deleted through any engine reaches every cache. An
``aiorwlock`` orders the watch's and the API's writes and the listing; the
lookup every start makes is a single dict read on the loop, taken without it.
"""

from __future__ import annotations

import asyncio
import logging

import aiorwlock
from nats.js.errors import KeyNotFoundError, NotFoundError

from dagnats.domain.definition import WorkflowDef, decode_workflow, encode_workflow
from dagnats.domain.errors import DefinitionDecodeError, WorkflowNotFound

from ..wire.names import DEFS_BUCKET

log = logging.getLogger("dagnats.definitions")


class Definitions:
    def __init__(self, js) -> None:
        self.js = js
        self._cache: dict[str, WorkflowDef] = {}
        self._lock = aiorwlock.RWLock()
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self.kv = await self.js.key_value(DEFS_BUCKET)
        self._watcher = await self.kv.watchall()
        ready = asyncio.Event()
        self._task = asyncio.create_task(self._follow(ready), name="definitions-watch")
        await ready.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=2.0)
        try:
            await self._watcher.stop()
        except Exception as err:  # shutting down
            log.debug("definitions watch stop: %s", err)

    async def _follow(self, ready: asyncio.Event) -> None:
        async for entry in self._watcher:
            if entry is None:  # the end of the initial values
                ready.set()
                continue
            async with self._lock.writer_lock:
                if entry.operation in ("DEL", "PURGE") or not entry.value:
                    self._cache.pop(entry.key, None)
                    continue
                try:
                    self._cache[entry.key] = decode_workflow(entry.value, f"stored workflow {entry.key}")
                except DefinitionDecodeError as err:
                    log.warning("ignoring unreadable definition %s: %s", entry.key, err)

    async def get(self, name: str) -> WorkflowDef:
        # A lookup is one step of the loop: no writer (each changes the cache without
        # awaiting in between) can be half-way through it; every start asks this.
        cached = self._cache.get(name)
        if cached is not None:
            return cached
        return await self._read(name)  # registered a moment ago, before the watch caught up

    async def _read(self, name: str) -> WorkflowDef:
        try:
            entry = await self.kv.get(name)
        except (KeyNotFoundError, NotFoundError):
            entry = None
        if entry is None or not entry.value:
            raise WorkflowNotFound(name)
        return decode_workflow(entry.value, f"stored workflow {name}")

    async def exists(self, name: str) -> bool:
        try:
            await self.get(name)
        except WorkflowNotFound:
            return False
        return True

    async def all(self) -> list[WorkflowDef]:
        async with self._lock.reader_lock:
            return [self._cache[name] for name in sorted(self._cache)]

    async def put(self, wf: WorkflowDef) -> None:
        await self.kv.put(wf.name, encode_workflow(wf))
        async with self._lock.writer_lock:
            self._cache[wf.name] = wf

    async def delete(self, name: str) -> None:
        await self.get(name)
        await self.kv.delete(name)
        async with self._lock.writer_lock:
            self._cache.pop(name, None)
