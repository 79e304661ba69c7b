"""Admission of a new run: idempotency keys, singleton locks, cancel_on waiters.

All state is in KV with compare-and-set, so several engine processes agree:
- ``idempotency_keys``: sha256(workflow + value) -> run id, taken with create
  (first writer wins) before the run is published.
- ``singleton_locks``: workflow[.hash(value)] -> run id. A lock whose run is
  terminal is free; taking or moving a lock is a CAS on its revision.
- ``event_waiters``: <event>.<run> -> the run's cancel_on matches with the
  right-hand side resolved from the input when the run starts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError

from dagnats.domain.definition import WorkflowDef
from dagnats.domain.errors import SingletonConflict
from dagnats.domain.paths import PathNotFound, extract_dot_path
from dagnats.domain.state import RunStatus

from ..wire.names import IDEMPOTENCY_BUCKET, SINGLETON_BUCKET, WAITERS_BUCKET

RunStatusOf = Callable[[str], Awaitable[RunStatus | None]]


class Waiter(msgspec.Struct, frozen=True):
    run_id: str
    event: str
    left: str = ""
    op: str = "eq"
    right: Any = None
    has_match: bool = False
    expires_at: str = ""


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
        self.waiters = await self.js.key_value(WAITERS_BUCKET)

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

    async def register_waiters(self, wf: WorkflowDef, data: Any, run_id: str, expires_at: Callable[[int], str]) -> None:
        for i, cancel in enumerate(wf.cancel_on):
            match = cancel.match
            right: Any = None
            if match is not None:
                right = match.right
                if isinstance(right, str) and right.startswith("input."):
                    try:
                        right = extract_dot_path(data, right[len("input.") :])
                    except PathNotFound:
                        right = None
            waiter = Waiter(
                run_id=run_id,
                event=cancel.event,
                left=match.left if match else "",
                op=match.op if match else "eq",
                right=right,
                has_match=match is not None,
                expires_at=expires_at(int(cancel.timeout)) if cancel.timeout else "",
            )
            await self.waiters.put(f"{cancel.event}.{run_id}.{i}", msgspec.json.encode(waiter))


def waiter_matches(waiter: Waiter, data: Any) -> bool:
    """``left`` is a dot-path into the event's data; values compare as text."""
    if not waiter.has_match:
        return True
    try:
        left = extract_dot_path(data, waiter.left)
    except PathNotFound:
        return False
    if waiter.right is None:
        return False
    return _value_text(left) == _value_text(waiter.right)
