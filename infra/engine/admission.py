"""Admission of a new run: idempotency keys, singleton locks, cancel_on waiters.

All state is in KV with compare-and-set, so several engine processes agree:
- ``idempotency_keys``: sha256(workflow + value) -> run id, taken with create
  (first writer wins) before the run is published.
- ``singleton_locks``: workflow[.hash(value)] -> run id. A lock whose run is
  terminal is free; taking or moving a lock is a CAS on its revision.
- ``event_waiters``: the run's cancel_on entries, their right-hand sides
  resolved from the input when the run starts (key layout in ``waiters.py``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError

from dagnats.domain.definition import WorkflowDef
from dagnats.domain.errors import SingletonConflict
from dagnats.domain.paths import PathNotFound, extract_dot_path
from dagnats.domain.state import RunStatus

from ..wire.names import IDEMPOTENCY_BUCKET, SINGLETON_BUCKET
from .waiters import Waiter, cancel_slot, put_waiter

log = logging.getLogger("dagnats.admission")

RunStatusOf = Callable[[str], Awaitable[RunStatus | None]]


def _digest(*parts: str) -> str:
    return hashlib.sha256(".".join(parts).encode()).hexdigest()[:40]


def _value_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"))


def key_value(data: Any, path: str) -> str | None:
    try:
        return _value_text(extract_dot_path(data, path))
    except PathNotFound:
        return None


class Admission:
    def __init__(self, js) -> None:
        self.js = js

    async def open(self) -> None:
        self.idempotency = await self.js.key_value(IDEMPOTENCY_BUCKET)
        self.singletons = await self.js.key_value(SINGLETON_BUCKET)

    # ---- idempotency ----------------------------------------------------------------

    async def claim_idempotency(
        self, wf: WorkflowDef, data: Any, run_id: str, explicit: str | None = None
    ) -> tuple[str | None, str | None]:
        """(existing run id or None, key taken or None). An explicit key wins over
        the workflow's ``idempotency_key`` dot-path into the input."""
        if explicit is not None:
            value: str | None = _value_text(explicit)
        elif wf.idempotency_key:
            value = key_value(data, wf.idempotency_key)
        else:
            return None, None
        if value is None:
            return None, None
        key = _digest(wf.name, value)
        try:
            await self.idempotency.create(key, run_id.encode())
            return None, key
        except KeyWrongLastSequenceError:
            entry = await self.idempotency.get(key)
            return entry.value.decode(), None

    async def release_idempotency(self, key: str | None) -> None:
        if key:
            await self.idempotency.delete(key)

    # ---- singleton --------------------------------------------------------------------

    async def take_singleton(self, wf: WorkflowDef, data: Any, run_id: str, status_of: RunStatusOf) -> str | None:
        """Take the lock for ``run_id``; returns the run to cancel (mode cancel) or None."""
        if wf.singleton is None:
            return None
        value = key_value(data, wf.singleton.key) if wf.singleton.key else None
        lock = wf.name if value is None else f"{wf.name}.{_digest(value)}"
        for _ in range(5):
            try:
                entry = await self.singletons.get(lock)
                holder, revision = entry.value.decode() if entry.value else "", entry.revision
            except (KeyNotFoundError, NotFoundError):
                holder, revision = "", None
            status = await status_of(holder) if holder else None
            active = status is not None and not RunStatus(status).is_terminal
            if active and wf.singleton.mode == "skip":
                raise SingletonConflict(wf.name, value or "", holder)
            try:
                if revision is None:
                    await self.singletons.create(lock, run_id.encode())
                else:
                    await self.singletons.update(lock, run_id.encode(), last=revision)
            except (KeyWrongLastSequenceError, APIError):
                continue
            return holder if active else None
        raise SingletonConflict(wf.name, value or "", "another run starting at the same time")

    # ---- cancel_on waiters ----------------------------------------------------------------

    async def register_waiters(self, wf: WorkflowDef, data: Any, run_id: str, after: Callable[[int], str]) -> None:
        """Store the run's cancel_on entries as waiters (``waiters.py``); ``after(ns)`` is the
        instant ``ns`` after the run's start. An entry whose right side names an input field
        the input lacks cannot match, and is not stored."""
        for i, cancel in enumerate(wf.cancel_on):
            match, right = cancel.match, None
            if match is not None:
                right = match.right
                if right.startswith("input."):
                    try:
                        right = extract_dot_path(data, right[len("input.") :])
                    except PathNotFound:
                        log.info("run %s: cancel_on %s cannot match: no input %s", run_id, cancel.event, match.right)
                        continue
            waiter = Waiter(
                run_id=run_id,
                event=cancel.event,
                slot=cancel_slot(i),
                left=match.left if match else "",
                op=match.op if match else "",
                right=right,
                since=after(0),
                expires_at=after(int(cancel.timeout)) if cancel.timeout else "",
            )
            await put_waiter(self.js, waiter)
