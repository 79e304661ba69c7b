"""Debounced triggers: bursts of fires kept in KV ``debounce_state``, each fired once, by any engine.

A fire of a trigger with ``debounce`` starts nothing: it is folded into its
burst (domain/debounce.py) with compare-and-set, so concurrent fires on
several engines all count. Every engine's TriggerService calls ``fire_due``
once a tick (about every second): a burst that is due starts one run whose
id is derived from the burst's key and KV revision, then is deleted only if
still at that revision.

Why a KV scan and not the engine's durable timers: those are message
schedules that fire into a *run's* inbox, and a burst has no run yet; each
fire would also have to cancel and re-arm its schedule. The burst in KV is
the one record: an engine restart (or another engine) finds it there and
fires it when due, at most a tick late. Two engines that fire the same burst
start the same run id, which the control plane starts once. An engine that
dies between the start and the delete leaves the burst; the next tick starts
the same run id again (nothing new) and deletes it. A fire that lands
between the start and the delete moves the revision on: the delete fails and
that fire becomes the next run (with the burst's latest data), never lost.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import msgspec
from nats.js.errors import (
    BadRequestError,
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NotFoundError,
)

from dagnats.domain.debounce import Burst, add_fire, burst_key, burst_run_id, is_due
from dagnats.domain.errors import DagnatsError
from dagnats.domain.triggers import Trigger

from .engine.streams import BUCKET_TTL
from .wire.names import DEBOUNCE_BUCKET
from .wire.reading import kv_entries

log = logging.getLogger("dagnats.debounce")

CAS_ATTEMPTS = 20
WRONG_LAST_SEQUENCE = 10071  # JetStream: the key moved past the revision we named

# (trigger, the burst, run id) -> starts that run (idempotent by run id)
StartBurst = Callable[[Trigger, Burst, str], Awaitable[Any]]


class Debouncer:
    def __init__(self, js: Any, start: StartBurst | None = None) -> None:
        """``start`` is needed by ``fire_due`` only (a webhook just adds fires)."""
        self.js, self.start = js, start
        self._kv: Any = None

    async def kv(self) -> Any:
        if self._kv is None:
            try:
                self._kv = await self.js.key_value(DEBOUNCE_BUCKET)
            except BucketNotFoundError:
                self._kv = await self.js.create_key_value(
                    bucket=DEBOUNCE_BUCKET, history=1, ttl=BUCKET_TTL[DEBOUNCE_BUCKET]
                )
        return self._kv

    async def add(self, t: Trigger, data: Any, now: datetime) -> str:
        """Count one fire of ``t`` into its burst; the burst's key."""
        assert t.debounce is not None
        kv, key = await self.kv(), burst_key(t.id, t.debounce, data)
        for _ in range(CAS_ATTEMPTS):
            current, revision = await self._read(key)
            value = msgspec.json.encode(add_fire(current, t.id, data, now))
            try:
                if current is None:
                    await kv.create(key, value)
                else:
                    await kv.update(key, value, last=revision)
                return key
            except KeyWrongLastSequenceError:
                continue  # another fire got there first: count this one on top of it
        raise DagnatsError(f"trigger {t.id}: the debounce state is too busy to record a fire; try again")

    async def fire_due(self, triggers: dict[str, Trigger], now: datetime) -> list[str]:
        """Start a run for each due burst of an enabled trigger; their run ids."""
        kv, started = await self.kv(), []
        for key, value in await kv_entries(self.js, DEBOUNCE_BUCKET, ">"):
            t = triggers.get(key.split(".", 1)[0])
            if t is None or t.debounce is None or not t.enabled or not is_due(_decode(value), t.debounce, now):
                continue
            burst, revision = await self._read(key)
            if burst is None or not is_due(burst, t.debounce, now):
                continue
            run_id = burst_run_id(key, revision)
            assert self.start is not None
            try:
                await self.start(t, burst, run_id)
            except DagnatsError as err:  # the workflow is gone or refuses the input: drop the burst
                log.warning("trigger %s: debounced run %s did not start: %s", t.id, run_id, err)
            started.append(run_id)
            try:
                await kv.delete(key, last=revision)
            except (KeyWrongLastSequenceError, BadRequestError) as err:
                if getattr(err, "err_code", WRONG_LAST_SEQUENCE) != WRONG_LAST_SEQUENCE:
                    raise
                # A fire landed meanwhile (or another engine deleted it): the next burst's.
        return started

    async def _read(self, key: str) -> tuple[Burst | None, int]:
        try:
            entry = await (await self.kv()).get(key)
        except (KeyNotFoundError, NotFoundError):
            return None, 0
        if not entry.value:
            return None, entry.revision or 0
        return _decode(entry.value), entry.revision or 0


def _decode(value: bytes) -> Burst:
    return msgspec.json.decode(value, type=Burst)


def burst_envelope_extra(burst: Burst) -> dict[str, Any]:
    """What a debounced run's envelope says about the burst it stands for."""
    return {"fires": burst.fires, "first_at": burst.first_at, "last_at": burst.last_at}
