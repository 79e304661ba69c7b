"""Flow control's actors: ConcurrencyActor (slot pools) and RateLimitActor (rate windows).

Theory of operation. All state lives in KV (``LimitStore``), one entry per
limit key, changed by compare-and-set, so several engines sharing one NATS
never over-admit; an actor caches what it last read and never owns the truth.
The rules are pure (``domain/limits.py``). An actor batches: every request
that reaches it while it works goes into one compare-and-set per key (it
tells itself ``Flush`` after the first, which queues behind the others). A
conflict (another engine wrote) reloads the entry and applies the batch
again. Answers go back through each request's future.

``FlowControl`` is what a RunActor calls (``ports.flow``): an ``Acquire``
asks every slot pool first, then — only when all of them granted — every
rate window, so a token is taken at the instant the attempt is dispatched;
the answer becomes the fact the run records. Every request names its
holder (run, step, attempt, map element), and a holder asking again is
granted without counting twice: a run rebuilt after a crash, or a write
that conflicted and is planned again, never acquires twice.

A slot pool's release grants its queue's head: the actor puts that holder's
``limit`` timer, fired now, into its run's inbox, and the run asks again
(and is granted). Slots whose holder no longer holds them by its run's
state (an engine died between taking a slot and recording it) are reaped:
every ``REAP_EVERY`` seconds the actor looks at holders and queue entries
older than ``REAP_AFTER``, asking each one's run at most once per
``REAP_AFTER``. A leaked slot is free again within REAP_AFTER + REAP_EVERY
(20 s); a grant whose wake was lost (an engine died between granting and
telling) is told again in the same bound.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pykka

from dagnats.domain.actions import Acquire, Release
from dagnats.domain.errors import WrongLastSequence
from dagnats.domain.kinds.admission import Answer, wake_fact
from dagnats.domain.limits import (
    RATE,
    SLOTS,
    LimitRequest,
    RateDecision,
    RateWindow,
    SlotPool,
    Waiter,
    rate_admit,
    slot_acquire,
    slot_release,
)

from .ports import Clock, LimitStore
from .threads import LeanActor

log = logging.getLogger("dagnats.flow")
MAX_TRIES = 16
REAP_EVERY = 10.0  # seconds
REAP_AFTER = 10_000  # ms a slot is held (or queued for) before the reaper may question it
ANSWER_TIMEOUT = 10.0  # seconds a run waits for flow control before it asks again later
RETRY_UNANSWERED_MS = 1000
CACHE_LIMIT = 50_000  # entries an actor keeps between requests (10k keyed limits fit)

_POOL = msgspec.json.Decoder(SlotPool)
_WINDOW = msgspec.json.Decoder(RateWindow)
_ENCODER = msgspec.json.Encoder()


@dataclass
class TakeSlot:
    key: str
    size: int
    waiter: Waiter
    about: str = ""
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
    holder: str
    about: str = ""
    reply: Future = field(default_factory=Future)


@dataclass(frozen=True)
class Flush:
    pass


@dataclass(frozen=True)
class Reap:
    pass


@dataclass(frozen=True)
class SlotAnswer:
    granted: bool
    position: int = 0


class _Batching(LeanActor):
    """Collects requests per key until ``Flush``; ``_apply`` runs a key's batch on its value."""

    use_daemon_thread = True
    name = "flow"

    def __init__(self, store: LimitStore, clock: Clock) -> None:
        super().__init__()
        self.store, self.clock = store, clock
        self.pending: dict[str, list[Any]] = {}
        self.cache: dict[str, tuple[bytes | None, int]] = {}
        self.flushing = False

    def on_start(self) -> None:
        threading.current_thread().name = self.name

    def _queue(self, key: str, request: Any) -> None:
        self.pending.setdefault(key, []).append(request)
        if not self.flushing:
            self.flushing = True
            self.actor_ref.tell(Flush())

    def _flush(self) -> None:
        self.flushing = False
        batches, self.pending = self.pending, {}
        if len(self.cache) > CACHE_LIMIT:
            self.cache.clear()
        for key, requests in batches.items():
            try:
                self._commit(key, requests)
            except Exception as err:  # noqa: BLE001 - every waiting caller must hear back
                log.warning("flow control %s: %s", key, err)
                self.cache.pop(key, None)
                for request in requests:
                    reply = getattr(request, "reply", None)
                    if reply is not None and not reply.done():
                        reply.set_exception(err)

    def _commit(self, key: str, requests: list[Any]) -> None:
        for _ in range(MAX_TRIES):
            value, revision = self.cache.get(key) or self.store.load(key)
            new_value, answers, after = self._apply(value, requests, self._now_ms())
            try:
                revision = self.store.save(key, new_value, revision) if new_value != value else revision
            except WrongLastSequence:
                self.cache.pop(key, None)  # another engine wrote: read it again
                continue
            self.cache[key] = (new_value, revision)
            for reply, answer in answers:
                if reply is not None and not reply.done():
                    reply.set_result(answer)
            after()
            return
        raise RuntimeError(f"gave up after {MAX_TRIES} conflicting writes")

    def _now_ms(self) -> int:
        return int(self.clock.now().timestamp() * 1000)

    def _apply(self, value: bytes | None, requests: list[Any], now_ms: int) -> tuple[bytes, list[Any], Any]:
        """The key's new value, (reply, answer) pairs, and what to do once it is saved."""
        raise NotImplementedError


class ConcurrencyActor(_Batching):
    name = "ConcurrencyActor"

    def __init__(self, store: LimitStore, clock: Clock) -> None:
        super().__init__(store, clock)
        self.questioned: dict[str, int] = {}  # holder -> when the reaper last asked its run

    def on_start(self) -> None:
        super().on_start()
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
            try:
                self._reap()
            finally:
                self.clock.call_later(REAP_EVERY, self._tell_reap)
        return None

    def _apply(self, value: bytes | None, requests: list[Any], now_ms: int) -> tuple[bytes, list[Any], Any]:
        pool = _POOL.decode(value) if value else SlotPool()
        answers: list[Any] = []
        granted: list[Waiter] = []
        for request in requests:
            if isinstance(request, TakeSlot):
                decision = slot_acquire(pool, request.waiter, request.size, now_ms)
                pool = msgspec.structs.replace(decision.pool, about=request.about or decision.pool.about)
                answers.append((request.reply, SlotAnswer(decision.granted, decision.position)))
            else:
                pool, more = slot_release(pool, request.holder, now_ms)
                granted += more
        asked = {r.waiter.holder for r in requests if isinstance(r, TakeSlot)}
        woken = [w for w in granted if w.holder not in asked]  # the others hear it in their answer
        return _ENCODER.encode(pool), answers, lambda: self._wake(woken)

    def _wake(self, waiters: list[Waiter]) -> None:
        """Released slots went to the queue's head: tell their runs to ask again."""
        now = self.clock.now()
        for waiter in waiters:
            self.store.wake(wake_fact(waiter.run_id, *waiter.step, now))

    def _reap(self) -> None:
        """Free slots (and queue places) whose holders' runs no longer hold or want them, and
        wake holders granted a slot they never took (their wake was lost)."""
        now_ms = self._now_ms()
        try:
            keys = [k for k in self.store.keys() if not k.startswith(f"{RATE}.")]
        except Exception as err:  # noqa: BLE001 - NATS away: try at the next round
            log.debug("reaper: %s", err)
            return
        self.questioned = {h: t for h, t in self.questioned.items() if now_ms - t < 2 * REAP_AFTER}
        for key in keys:
            value, _ = self.store.load(key)
            pool = _POOL.decode(value) if value else SlotPool()
            entries = [(h, since, True) for h, since in pool.holders.items()]
            entries += [(w.holder, w.since, False) for w in pool.queue]
            unwoken: list[Waiter] = []
            for holder, since, granted in entries:
                if now_ms - since < REAP_AFTER or now_ms - self.questioned.get(holder, 0) < REAP_AFTER:
                    continue
                self.questioned[holder] = now_ms
                known = self.store.holders(holder.split(".", 1)[0])
                if known is None or holder not in known[0]:
                    log.info("reaping %s in %s: its run no longer holds or waits for it", holder, key)
                    self._queue(key, FreeSlot(key, holder))
                elif granted and holder in known[1]:
                    log.info("waking %s: granted a slot of %s it has not taken", holder, key)
                    unwoken.append(Waiter(holder, 0.0))
            self._wake(unwoken)


class RateLimitActor(_Batching):
    name = "RateLimitActor"

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, TakeTokens):
            self._queue(message.key, message)
        elif isinstance(message, Flush):
            self._flush()
        return None

    def _apply(self, value: bytes | None, requests: list[Any], now_ms: int) -> tuple[bytes, list[Any], Any]:
        window = _WINDOW.decode(value) if value else RateWindow()
        answers = []
        for request in requests:
            decision: RateDecision = rate_admit(
                window, now_ms, request.limit, request.period_ms, request.units, request.holder
            )
            window = msgspec.structs.replace(decision.window, about=request.about or decision.window.about)
            answers.append((request.reply, decision))
        return _ENCODER.encode(window), answers, lambda: None


class FlowControl:
    """What a run asks of flow control (``ports.flow``): blocking, from its actor's thread."""

    def __init__(self, slots: pykka.ActorRef, rates: pykka.ActorRef, clock: Clock) -> None:
        self.slots, self.rates, self.clock = slots, rates, clock

    def acquire(self, acquire: Acquire) -> Answer:
        """Every slot pool, then every rate window; the first that says wait is the answer."""
        slots = [r for r in acquire.requests if r.kind == SLOTS]
        asked = [
            (
                request,
                TakeSlot(
                    request.key,
                    request.size,
                    Waiter(acquire.holder, request.rank),
                    request.reason,
                ),
            )
            for request in slots
        ]
        for _, take in asked:
            self.slots.tell(take)
        holds: list[str] = []
        for request, take in asked:
            answer = self._wait(request, take.reply)
            if isinstance(answer, Answer):
                return answer
            if answer.granted:
                holds.append(request.key)
                continue
            reason = _queued(request, answer.position)
            return Answer(False, tuple(holds), request.key, reason, position=answer.position)
        rate_at = 0
        for request in acquire.requests:
            if request.kind != RATE:
                continue
            take_tokens = TakeTokens(
                request.key, request.size, request.period_ms, request.units, acquire.holder, request.reason
            )
            self.rates.tell(take_tokens)
            decision = self._wait(request, take_tokens.reply)
            if isinstance(decision, Answer):
                return Answer(False, tuple(holds), decision.key, decision.reason, decision.retry_at_ms)
            if not decision.granted:  # (units over the limit, refused at validation: a period)
                retry_at = decision.retry_at_ms or self._now_ms() + request.period_ms
                return Answer(False, tuple(holds), request.key, request.reason, retry_at)
            rate_at = max(rate_at, decision.at_ms)
        return Answer(True, tuple(holds), rate_at_ms=rate_at)

    def release(self, releases: list[Release]) -> None:
        for release in releases:
            self.slots.tell(FreeSlot(release.key, release.holder))

    def _now_ms(self) -> int:
        return int(self.clock.now().timestamp() * 1000)

    def _wait(self, request: LimitRequest, reply: Future) -> Any:
        try:
            return reply.result(timeout=ANSWER_TIMEOUT)
        except (FutureTimeout, Exception) as err:  # noqa: BLE001 - the run asks again later
            reason = f"{request.reason}: flow control did not answer ({err or 'timeout'})"
            return Answer(False, (), request.key, reason, self._now_ms() + RETRY_UNANSWERED_MS)


def _queued(request: LimitRequest, position: int) -> str:
    return f"{request.reason}: all {request.size} in use, queued at {position}"
