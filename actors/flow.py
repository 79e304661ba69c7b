"""Flow control's actors: ConcurrencyActor (slot pools) and RateLimitActor (rate windows).

Theory of operation. All state lives in KV (``LimitStore``), one entry per
limit key, changed by compare-and-set, so several engines sharing one NATS
never over-admit; an actor caches what it last read and never owns the truth.
The rules are pure (``domain/limits.py``); an actor batches: every request
that reaches it while it works goes into one compare-and-set per key (it
tells itself ``Flush`` after the first, which queues behind the others). A
conflict (another engine wrote) reloads the entry and applies the batch
again. Answers go back through each request's future.

A slot pool's release grants its queue's head: the actor puts ``step.admitted``
(``workflow.admitted``) into that run's inbox. Slots whose holder no longer
holds them by its run's state (an engine died between taking a slot and
recording it, or between an attempt's end and its release) are reaped every
``REAP_EVERY`` seconds, once older than ``REAP_AFTER``: the bound on how long
a leaked slot stays taken.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pykka

from dagnats.domain import events as ev
from dagnats.domain.errors import WrongLastSequence
from dagnats.domain.limits import RateDecision, RateWindow, SlotPool, Waiter, rate_admit, slot_acquire, slot_release

from .ports import Clock, LimitStore

log = logging.getLogger("dagnats.flow")
MAX_TRIES = 16
REAP_EVERY = 10.0  # seconds
REAP_AFTER = 10_000  # ms a slot is held before the reaper may question it

_POOL = msgspec.json.Decoder(SlotPool)
_WINDOW = msgspec.json.Decoder(RateWindow)
_ENCODER = msgspec.json.Encoder()


@dataclass
class TakeSlot:
    key: str
    size: int
    waiter: Waiter
    reply: Future = field(default_factory=Future)


@dataclass
class FreeSlot:
    key: str
    holder: str


@dataclass
class TakeTokens:
    key: str
    limit: int
    period_ms: int
    units: int
    reply: Future = field(default_factory=Future)


@dataclass(frozen=True)
class Flush:
    pass


@dataclass(frozen=True)
class Reap:
    pass


class _Batching(pykka.ThreadingActor):
    """Collects requests per key until ``Flush``; ``_apply`` runs a key's batch on its value."""

    use_daemon_thread = True

    def __init__(self, store: LimitStore, clock: Clock) -> None:
        super().__init__()
        self.store, self.clock = store, clock
        self.pending: dict[str, list[Any]] = {}
        self.cache: dict[str, tuple[bytes | None, int]] = {}
        self.flushing = False

    def _queue(self, key: str, request: Any) -> None:
        self.pending.setdefault(key, []).append(request)
        if not self.flushing:
            self.flushing = True
            self.actor_ref.tell(Flush())

    def _flush(self) -> None:
        self.flushing = False
        batches, self.pending = self.pending, {}
        for key, requests in batches.items():
            try:
                self._commit(key, requests)
            except Exception as err:  # noqa: BLE001 - every waiting caller must hear back
                log.warning("flow control %s: %s", key, err)
                for request in requests:
                    reply = getattr(request, "reply", None)
                    if reply is not None and not reply.done():
                        reply.set_exception(err)

    def _commit(self, key: str, requests: list[Any]) -> None:
        for _ in range(MAX_TRIES):
            value, revision = self.cache.get(key) or self.store.load(key)
            new_value, answers = self._apply(value, requests, self._now_ms())
            try:
                revision = self.store.save(key, new_value, revision) if new_value != value else revision
            except WrongLastSequence:
                self.cache.pop(key, None)  # another engine wrote: read it again
                continue
            self.cache[key] = (new_value, revision)
            self._answer(key, answers)
            return
        raise RuntimeError(f"gave up after {MAX_TRIES} conflicting writes")

    def _now_ms(self) -> int:
        return int(self.clock.now().timestamp() * 1000)

    def _apply(self, value: bytes | None, requests: list[Any], now_ms: int) -> tuple[bytes, list[Any]]:
        raise NotImplementedError

    def _answer(self, key: str, answers: list[Any]) -> None:
        for reply, answer in answers:
            if reply is not None and not reply.done():
                reply.set_result(answer)


@dataclass(frozen=True)
class SlotAnswer:
    granted: bool
    position: int = 0
    in_use: int = 0


class ConcurrencyActor(_Batching):
    def on_start(self) -> None:
        threading.current_thread().name = "ConcurrencyActor"
        self.clock.call_later(REAP_EVERY, self._tell_reap)

    def _tell_reap(self) -> None:
        if self.actor_ref.is_alive():
            self.actor_ref.tell(Reap())

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, (TakeSlot, FreeSlot)):
            self._queue(message.key, message)
        elif isinstance(message, Flush):
            self._flush()
        elif isinstance(message, Reap):
            self._reap()
            self.clock.call_later(REAP_EVERY, self._tell_reap)
        return None

    def _apply(self, value: bytes | None, requests: list[Any], now_ms: int) -> tuple[bytes, list[Any]]:
        pool = _POOL.decode(value) if value else SlotPool()
        answers: list[Any] = []
        self.granted: list[Waiter] = []
        for request in requests:
            if isinstance(request, TakeSlot):
                decision = slot_acquire(pool, request.waiter, request.size, now_ms)
                pool = decision.pool
                answers.append((request.reply, SlotAnswer(decision.granted, decision.position, len(pool.holders))))
            else:
                pool, granted = slot_release(pool, request.holder, now_ms)
                self.granted += granted
        return _ENCODER.encode(pool), answers

    def _answer(self, key: str, answers: list[Any]) -> None:
        super()._answer(key, answers)
        for waiter in self.granted:  # released slots went to the queue's head: tell them
            self.store.admit(admitted(waiter, key, self.clock.now()))
        self.granted = []

    def _reap(self) -> None:
        """Free slots whose holders' runs do not hold them (and queue entries nobody waits in)."""
        now_ms = self._now_ms()
        try:
            keys = [k for k in self.store.keys() if not k.startswith("rate.")]
        except Exception as err:  # noqa: BLE001 - NATS away: try at the next round
            log.debug("reaper: %s", err)
            return
        for key in keys:
            value, _ = self.store.load(key)
            pool = _POOL.decode(value) if value else SlotPool()
            suspects = [h for h, since in pool.holders.items() if now_ms - since > REAP_AFTER]
            suspects += [w.holder for w in pool.queue if now_ms - int(w.rank) > REAP_AFTER and "." in w.holder]
            for holder in suspects:
                run_id = holder.split(".", 1)[0]
                legit = self.store.holders(run_id)
                if legit is None or holder not in legit:
                    log.info("reaping slot of %s in %s: its run no longer holds it", holder, key)
                    self._queue(key, FreeSlot(key, holder))


def admitted(waiter: Waiter, key: str, now: Any) -> ev.Event:
    """The fact that tells a queued step (or run) it now holds its slot."""
    stamp = ev.format_timestamp(now)
    if not waiter.step_id:
        return ev.RunAdmitted(
            run_id=waiter.run_id, timestamp=stamp, payload=ev.Admission(holds=(key,)), id=f"{waiter.holder}.admitted"
        )
    return ev.StepAdmitted(
        run_id=waiter.run_id,
        step_id=waiter.step_id,
        attempt=waiter.attempt,
        instance=waiter.instance,
        timestamp=stamp,
        payload=ev.Admission(holds=(key,)),
        id=f"{waiter.holder}.admitted",
    )


class RateLimitActor(_Batching):
    def on_start(self) -> None:
        threading.current_thread().name = "RateLimitActor"

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, TakeTokens):
            self._queue(message.key, message)
        elif isinstance(message, Flush):
            self._flush()
        return None

    def _apply(self, value: bytes | None, requests: list[Any], now_ms: int) -> tuple[bytes, list[Any]]:
        window = _WINDOW.decode(value) if value else RateWindow()
        answers = []
        for request in requests:
            decision: RateDecision = rate_admit(window, now_ms, request.limit, request.period_ms, request.units)
            window = decision.window
            answers.append((request.reply, decision))
        return _ENCODER.encode(window), answers
