"""Flow control's state in NATS, and the listing ``dagnats limits`` shows.

``NatsLimitStore`` is the ``LimitStore`` the flow actors use: one entry per
limit key in the ``flow_control`` KV bucket, written only at the revision it
was read at (compare-and-set), so engines sharing one NATS never over-admit.
``list_limits`` reads every entry and says, per key, what is in use, who
waits, and why the head of the line waits.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import BadRequestError, KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError

from dagnats.domain.errors import RunNotFound, WrongLastSequence
from dagnats.domain.events import Event, format_timestamp
from dagnats.domain.kinds.admission import awaiting_admission, slot_holders
from dagnats.domain.limits import RATE, RateWindow, SlotPool, Waiter

from ..wire.facts import publish_fact
from ..wire.names import FLOW_BUCKET
from .bridge import LoopBridge
from .reader import RunReader

_POOL = msgspec.json.Decoder(SlotPool)
_WINDOW = msgspec.json.Decoder(RateWindow)


class NatsLimitStore:
    def __init__(self, js: JetStreamContext, bridge: LoopBridge, reader: RunReader) -> None:
        self.js, self.bridge, self.reader = js, bridge, reader
        self._kv: Any = None

    async def _bucket(self) -> Any:
        if self._kv is None:
            self._kv = await self.js.key_value(FLOW_BUCKET)
        return self._kv

    def load(self, key: str) -> tuple[bytes | None, int]:
        return self.bridge.call(self._load(key))

    async def _load(self, key: str) -> tuple[bytes | None, int]:
        try:
            entry = await (await self._bucket()).get(key)
        except (KeyNotFoundError, NotFoundError):
            return None, 0
        return (entry.value or None), entry.revision or 0

    def save(self, key: str, value: bytes, revision: int) -> int:
        return self.bridge.call(self._save(key, value, revision))

    async def _save(self, key: str, value: bytes, revision: int) -> int:
        kv = await self._bucket()
        try:
            if revision:
                return await kv.update(key, value, last=revision)
            return await kv.create(key, value)
        except (KeyWrongLastSequenceError, BadRequestError) as conflict:
            raise WrongLastSequence(f"limit {key} moved past revision {revision}") from conflict

    def keys(self) -> list[str]:
        return self.bridge.call(limit_keys(self.js))

    def wake(self, event: Event) -> None:
        self.bridge.spawn(publish_fact(self.js, event))

    def holders(self, run_id: str) -> tuple[set[str], set[str]] | None:
        return self.bridge.call(self._holders(run_id))

    async def _holders(self, run_id: str) -> tuple[set[str], set[str]] | None:
        try:
            run = await self.reader.get(run_id)
        except RunNotFound:
            return None
        return slot_holders(run), awaiting_admission(run)


async def limit_keys(js: JetStreamContext) -> list[str]:
    """Every key of the bucket, from the stream's subjects: one request, no consumer (a KV
    watcher can end early while keys are being written)."""
    prefix = f"$KV.{FLOW_BUCKET}."
    info = await js.stream_info(f"KV_{FLOW_BUCKET}", subjects_filter=f"{prefix}>")
    return [subject[len(prefix) :] for subject in (info.state.subjects or {})]


# ---- the listing -------------------------------------------------------------------------------


class Holder(msgspec.Struct, frozen=True, omit_defaults=True):
    run_id: str
    step_id: str = ""
    attempt: int = 0
    instance: int | None = None
    since: str = ""
    position: int = 0  # in the queue: 1 = next


class LimitView(msgspec.Struct, frozen=True):
    key: str
    kind: str  # slots | rate
    rule: str = ""
    limit: int = 0  # slots: the pool's size; rate: units per period
    period_ms: int = 0
    in_use: int = 0  # slots held, or units used in the current window
    holders: list[Holder] = []
    queue: list[Holder] = []
    head: str = ""  # why the head of the queue waits
    next_free_at: str = ""  # rate: when the window has room for one more unit


async def list_limits(js: JetStreamContext, now: datetime | None = None) -> list[LimitView]:
    """Every limit key with its use and its queue, by key."""
    now_ms = int((now or datetime.now(UTC)).timestamp() * 1000)
    kv = await js.key_value(FLOW_BUCKET)
    keys = sorted(await limit_keys(js))

    async def view(key: str) -> LimitView | None:
        try:
            entry = await kv.get(key)
        except (KeyNotFoundError, NotFoundError):
            return None
        if not entry.value:
            return None
        if key.startswith(f"{RATE}."):
            return _rate_view(key, _WINDOW.decode(entry.value), now_ms)
        return _pool_view(key, _POOL.decode(entry.value))

    views = await asyncio.gather(*(view(k) for k in keys))
    return [v for v in views if v is not None]


def _pool_view(key: str, pool: SlotPool) -> LimitView:
    holders = [_holder(Waiter(h, 0.0), since) for h, since in sorted(pool.holders.items(), key=lambda i: i[1])]
    queue = [_holder(w, w.since, i + 1) for i, w in enumerate(pool.queue)]
    head = ""
    if queue:
        first = queue[0]
        who = f"run {first.run_id}" + (f" step {first.step_id}" if first.step_id else "")
        head = f"{who} waits since {first.since}: all {pool.size} slots in use ({pool.about})"
    return LimitView(key, "slots", pool.about, pool.size, 0, len(pool.holders), holders, queue, head)


def _rate_view(key: str, window: RateWindow, now_ms: int) -> LimitView:
    kept = [e for e in window.entries if e[0] > now_ms - window.period_ms]
    used = sum(units for _, _, units in kept)
    queue = [_holder(Waiter(w[0], 0.0), w[1], i + 1) for i, w in enumerate(window.waiting)]
    next_free = ""
    if used >= window.limit and kept:
        next_free = _stamp(kept[0][0] + window.period_ms)
    head = ""
    if queue:
        first = queue[0]
        who = f"run {first.run_id}" + (f" step {first.step_id}" if first.step_id else "")
        when = f"; the next token is free at {next_free}" if next_free else ""
        head = f"{who} waits since {first.since}: {used} of {window.limit} per {window.period_ms} ms used{when}"
    return LimitView(
        key, RATE, window.about, window.limit, window.period_ms, used, [], queue, head, next_free_at=next_free
    )


def _holder(waiter: Waiter, since_ms: int, position: int = 0) -> Holder:
    step_id, attempt, instance = waiter.step
    return Holder(waiter.run_id, step_id, attempt, instance, _stamp(since_ms) if since_ms else "", position)


def _stamp(ms: int) -> str:
    return format_timestamp(datetime.fromtimestamp(ms / 1000, UTC))
