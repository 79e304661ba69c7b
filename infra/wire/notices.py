"""Run notices: what the engine recorded for a run, announced on core NATS.

After the record that ends a run (appended to ``history.<run>``), the run's owner
publishes a small ``RunNotice`` (not stored) on ``dagnats.run.<run>.end``. Waiting
for a step listens to ``history.<run>`` itself (core NATS: every record appended
is a message there too) and reads the run when a record is about the step or ends
the run. Waiting for a run
costs the server one plain subscription, no JetStream consumer: ``await_run``
subscribes, reads the run's status once to close the race with anything
recorded before the subscription, then re-reads the status only when a notice
says something relevant happened. Notices are at-most-once (an engine killed
between its append and its notice sends none), so a waiter also re-reads the
status after ``recheck`` seconds without one. The notice of a run's end
carries its view when that is small, and the waiter reads nothing more.

A client that starts a run (``Client.start``) makes its id up and listens for its end
before it sends the start (``StartedRuns``): nothing about the run can precede that
subscription, so waiting for it then reads nothing at all: the end notice is the answer.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription
from nats.errors import TimeoutError as NatsTimeoutError

from dagnats.domain.events import decode_record
from dagnats.domain.transitions import ENDING_EVENTS

from .subjects import history_subject, notice_subject

RECHECK = 5.0
SOON = 0.02  # seconds: how soon a step waiter reads the run again after a record about its step


class RunNotice(msgspec.Struct, frozen=True, array_like=True):
    """The record that ends a run: its sequence, the run's status after it, and the run's
    view (as a status read answers it) when that is small: a waiter then returns without
    reading the run again.

    ``steps`` and ``terminal`` keep the positional wire shape clients before the end-only
    notices decode (``steps`` is no longer filled; ``terminal`` is always true)."""

    seq: int
    status: str
    steps: tuple[str, ...] = ()
    terminal: bool = True
    view: dict[str, Any] | None = None


VIEW_IN_NOTICE = 16 * 1024  # bytes: a larger view is read by the waiter instead


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(RunNotice)


def encode_notice(notice: RunNotice) -> bytes:
    """The notice, without its view if that would make it larger than ``VIEW_IN_NOTICE``."""
    data = _ENCODER.encode(notice)
    if notice.view is not None and len(data) > VIEW_IN_NOTICE:
        data = _ENCODER.encode(msgspec.structs.replace(notice, view=None))
    return data


def decode_notice(data: bytes) -> RunNotice | None:
    try:
        return _DECODER.decode(data)
    except msgspec.DecodeError:
        return None


View = dict[str, Any]


async def await_run(
    nc: NATS,
    run_id: str,
    read: Callable[[], Awaitable[View]],
    finished: Callable[[View], bool],
    step: str | None = None,
    recheck: float = RECHECK,
    listening: Subscription | None = None,
) -> View:
    """Read the run's view until ``finished(view)``; reads again only when a notice
    about the run (or ``step``) arrives, or after ``recheck`` quiet seconds.

    ``listening``: a subscription to the run's end made before the run started: the
    first read waits for a notice (or ``recheck`` seconds). Not bounded here: wrap it in
    ``asyncio.wait_for`` for a timeout.
    """
    sub = listening or await nc.subscribe(notice_subject(run_id) if step is None else history_subject(run_id))
    try:
        view = None if listening is not None else await read()
        quiet = recheck
        while view is None or not finished(view):
            try:
                msg = await sub.next_msg(timeout=quiet)
            except (TimeoutError, NatsTimeoutError):
                view = await read()
                quiet = recheck
                continue
            if step is not None:
                if _about(msg.data, step):
                    view = await read()
                    # The record reaches a step waiter as it is stored, maybe before its run's
                    # owner serves the state after it: look again soon.
                    quiet = min(SOON, recheck)
                continue
            notice = decode_notice(msg.data)
            if notice is not None and notice.view is not None:
                view = notice.view  # the run's last state, sent with its end
            else:
                view = await read()
        return view
    finally:
        await drop(sub)


def _about(record: bytes, step: str) -> bool:
    """Whether a history record is about ``step`` or ends the run (or cannot be read)."""
    try:
        events = decode_record(record)
    except (msgspec.DecodeError, ValueError):
        return True
    return any(e.step_id == step or e.type in ENDING_EVENTS for e in events)


class StartedRuns:
    """Subscriptions to the ends of runs a client started, kept ``keep`` seconds (at most
    ``most`` of them) for a ``wait`` to take. Subscribed before the start was sent, on the
    same connection: the server holds the interest before the run exists, so the run's
    end notice cannot be missed and the wait reads nothing."""

    def __init__(self, keep: float = 30.0, most: int = 1000) -> None:
        self.keep, self.most = keep, most
        self._subs: OrderedDict[str, tuple[Subscription, float]] = OrderedDict()

    async def listen(self, nc: NATS, run_id: str) -> Subscription:
        await self._expire()
        return await nc.subscribe(notice_subject(run_id))

    def started(self, run_id: str, sub: Subscription) -> None:
        """The run ``sub`` listens to was started by this start (not an earlier one)."""
        self._subs[run_id] = (sub, time.monotonic() + self.keep)

    def take(self, run_id: str) -> Subscription | None:
        kept = self._subs.pop(run_id, None)
        return kept[0] if kept is not None else None

    async def _expire(self) -> None:
        now = time.monotonic()
        while self._subs:
            run_id, (sub, until) = next(iter(self._subs.items()))
            if until > now and len(self._subs) < self.most:
                return
            del self._subs[run_id]
            await drop(sub)


async def drop(sub: Subscription) -> None:
    try:
        await sub.unsubscribe()
    except Exception:  # noqa: BLE001 - the connection is closing: nothing to undo
        pass
