"""Run notices: what the engine recorded for a run, announced on core NATS.

After each record it appends to ``history.<run>``, the run's owner publishes a
small ``RunNotice`` (not stored): on ``dagnats.run.<run>.end`` for the record that
ends the run, on ``dagnats.run.<run>.progress`` for the others, so that waiting
for a run's end hears one notice, not one per record. Waiting for a run
costs the server one plain subscription, no JetStream consumer: ``await_run``
subscribes, reads the run's status once to close the race with anything
recorded before the subscription, then re-reads the status only when a notice
says something relevant happened. Notices are at-most-once (an engine killed
between its append and its notice sends none), so a waiter also re-reads the
status after ``recheck`` seconds without one. The notice of a run's end
carries its view when that is small, and the waiter reads nothing more.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeoutError

from .subjects import notice_subject, notices_filter

RECHECK = 5.0


class RunNotice(msgspec.Struct, frozen=True, array_like=True):
    """One appended record: its sequence, the run's status after it, and what it holds.

    The record that ends a run carries the run's view (as a status read answers it)
    when that is small: a waiter then returns without reading the run again."""

    seq: int
    status: str
    steps: tuple[str, ...] = ()  # the steps its events are about
    terminal: bool = False
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
) -> View:
    """Read the run's view until ``finished(view)``; reads again only when a notice
    about the run (or ``step``) arrives, or after ``recheck`` quiet seconds.

    Not bounded here: wrap it in ``asyncio.wait_for`` for a timeout.
    """
    sub = await nc.subscribe(notice_subject(run_id) if step is None else notices_filter(run_id))
    try:
        view = await read()
        while not finished(view):
            try:
                msg = await sub.next_msg(timeout=recheck)
            except (TimeoutError, NatsTimeoutError):
                view = await read()
                continue
            notice = decode_notice(msg.data)
            if notice is not None and notice.terminal and notice.view is not None:
                view = notice.view  # the run's last state, sent with its end
            # A run waited on is finished only once it ends: its other records are not read.
            elif notice is None or notice.terminal or (step is not None and step in notice.steps):
                view = await read()
        return view
    finally:
        try:
            await sub.unsubscribe()
        except Exception:  # noqa: BLE001 - the connection is closing: nothing to undo
            pass
