"""Admission of a new run: idempotency keys, singleton locks, cancel_on waiters.

All state is in KV with compare-and-set, so several engine processes agree:
- ``idempotency_keys``: sha256(workflow + value) -> the run id and when it was claimed,
  taken with create (first writer wins) before the run is published. A claim whose run
  has not started ``CLAIM_GRACE`` after it was taken is abandoned (its engine died, or
  its send failed and never landed): the next start with the key takes it over (CAS).
- ``singleton_locks``: workflow[.hash(value)] -> run id. A lock whose run is
  terminal is free; taking or moving a lock is a CAS on its revision.
- ``event_waiters``: the run's cancel_on entries, their right-hand sides
  resolved from the input when the run starts (key layout in ``waiters.py``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
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
RunStarted = Callable[[str], Awaitable[bool]]

# A start sends its run within SEND_BY seconds of claiming its key, or gives the key up; a
# send ends within its timeouts (hand-over 1 s, publish 5 s). So a claim whose run has not
# started CLAIM_GRACE after it was taken will not start: another start may take it over.
SEND_BY = 3.0
CLAIM_GRACE = 10.0
CLAIM_POLL = 0.1  # seconds between looks at a claim still being started


@dataclass(frozen=True)
class Claim:
    """An idempotency key taken for a run: ``at`` on the admission's clock."""

    key: str
    run_id: str
    at: float
    revision: int


def _claim_value(run_id: str, at: float, sent: bool = False) -> bytes:
    return json.dumps({"run_id": run_id, "claimed_at": at, "sent": sent}).encode()


def _claim_holder(value: bytes | None) -> tuple[str, float | None, bool]:
    """(run id, claim time, whether its start was stored). A bare run id is a claim from
    before claims were timed: its time unknown, its start to be looked for."""
    text = (value or b"").decode()
    try:
        claim = json.loads(text)
        return str(claim["run_id"]), float(claim["claimed_at"]), bool(claim.get("sent"))
    except (ValueError, KeyError, TypeError):
        return text, None, False


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
    def __init__(self, js, now: Callable[[], float] = time.time) -> None:
        self.js, self.now = js, now

    async def open(self) -> None:
        self.idempotency = await self.js.key_value(IDEMPOTENCY_BUCKET)
        self.singletons = await self.js.key_value(SINGLETON_BUCKET)

    @staticmethod
    def applies(wf: WorkflowDef, explicit_key: Any) -> bool:
        """Whether a start of ``wf`` has anything to pass here: an idempotency key (given,
        or the workflow's), a singleton lock, cancel_on waiters."""
        return explicit_key is not None or bool(wf.idempotency_key) or wf.singleton is not None or bool(wf.cancel_on)

    # ---- idempotency ----------------------------------------------------------------

    async def claim_idempotency(
        self, wf: WorkflowDef, data: Any, run_id: str, explicit: str | None, started: RunStarted
    ) -> tuple[str | None, Claim | None]:
        """(existing run id or None, the key claimed for ``run_id`` or None). An explicit key
        wins over the workflow's ``idempotency_key`` dot-path into the input.

        A key held by a run that was sent (``confirm``) or has started answers with that
        run, even once the run is deleted. A key held by a start still under way is watched
        until its run starts (answered with it), its claim is released (taken), or the
        claim is abandoned (taken over); one held by this very run id (a start with an
        explicit run id, sent again) is this start's."""
        if explicit is not None:
            value: str | None = _value_text(explicit)
        elif wf.idempotency_key:
            value = key_value(data, wf.idempotency_key)
        else:
            return None, None
        if value is None:
            return None, None
        key = _digest(wf.name, value)
        while True:
            at = self.now()
            try:
                revision = await self.idempotency.create(key, _claim_value(run_id, at))
                return None, Claim(key, run_id, at, revision)
            except KeyWrongLastSequenceError:
                pass
            try:
                entry = await self.idempotency.get(key)
            except (KeyNotFoundError, NotFoundError):
                continue  # released a moment ago
            holder, claimed_at, sent = _claim_holder(entry.value)
            if sent or await started(holder):
                return holder, None
            if holder == run_id:  # this start again (an explicit run id): sending it twice is one run
                return None, Claim(key, run_id, claimed_at if claimed_at is not None else at, entry.revision)
            if claimed_at is None or at - claimed_at >= CLAIM_GRACE:
                try:
                    revision = await self.idempotency.update(key, _claim_value(run_id, at), last=entry.revision)
                except KeyWrongLastSequenceError:
                    continue
                log.warning("idempotency key of run %s taken over by run %s: its start never landed", holder, run_id)
                return None, Claim(key, run_id, at, revision)
            await asyncio.sleep(CLAIM_POLL)

    def may_send(self, claim: Claim | None) -> bool:
        """Whether a start under ``claim`` may still send its run (``SEND_BY``)."""
        return claim is None or self.now() - claim.at < SEND_BY

    async def confirm_idempotency(self, claim: Claim | None) -> None:
        """Mark a claim whose run was stored: it answers with its run from then on, without
        looking for the run (which may be deleted), and is never taken over."""
        if claim is None:
            return
        try:
            await self.idempotency.update(claim.key, _claim_value(claim.run_id, claim.at, True), last=claim.revision)
        except Exception as err:  # noqa: BLE001 - unmarked, the claim still finds its run
            log.warning("run %s: idempotency claim not confirmed (%s)", claim.run_id, err)

    async def release_idempotency(self, claim: Claim | None) -> None:
        """Give up a claim whose run was never sent; one that fails to go ages out."""
        if claim is None:
            return
        try:
            await self.idempotency.delete(claim.key, last=claim.revision)
        except Exception as err:  # noqa: BLE001 - the claim is abandoned after CLAIM_GRACE anyway
            log.warning("run %s: idempotency claim not released (%s); it lapses in %gs", claim.run_id, err, CLAIM_GRACE)

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
