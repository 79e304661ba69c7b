"""Durable timers: one NATS message schedule per timer (ADR-51, nats-server >= 2.12).

A timer is armed by publishing its ``timer.fired`` fact to ``schedule.<run>.<timer>``
in the inbox stream with ``Nats-Schedule: @at <due>`` and ``Nats-Schedule-Target:
inbox.<run>``: when it falls due the server publishes the fact into the run's
inbox, where the engine consumes it like any other. No engine holds the timer:
it survives restarts and kill -9 (a schedule due while the server was down fires
on restart), and a passivated run waiting on it costs the engine nothing.

Arming the same timer again replaces its schedule (one per subject); cancelling
purges it. The server fires a schedule about a quarter of a second after it is
due at the earliest; the engine fires short timers from memory as well
(``actors.timer``) — a second copy of a fact is ignored by ``decide``.
"""

from __future__ import annotations

import asyncio

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from dagnats.domain.actions import StartTimer
from dagnats.domain.events import TimerFired, encode_event
from dagnats.domain.timers import fired_event

from .headers import SCHEDULE, SCHEDULE_TARGET
from .names import INBOX_STREAM
from .reading import stored_batches
from .subjects import inbox_subject, schedule_subject, schedules_filter

_DECODER = msgspec.json.Decoder(TimerFired)


async def arm_schedule(js: JetStreamContext, stream: str, subject: str, target: str, due: str, body: bytes) -> None:
    """One durable timer: ``body`` published to ``target`` (a subject of ``stream``) at ``due``
    (RFC3339). Arming ``subject`` again replaces its schedule. DAG runs' timers and reactive
    executions' timeouts (``infra.reactive``) are both armed here."""
    headers = {SCHEDULE: f"@at {due}", SCHEDULE_TARGET: target}
    await js.publish(subject, body, stream=stream, headers=headers)


async def cancel_schedule(js: JetStreamContext, stream: str, subject: str) -> None:
    """Purge a schedule (one that already fired is gone already)."""
    try:
        await js.purge_stream(stream, subject=subject)
    except NotFoundError:
        pass


async def arm_timers(js: JetStreamContext, run_id: str, timers: list[StartTimer], trace_parent: str) -> None:
    """Store one schedule per timer (concurrently); each fires ``fired_event`` into the run's inbox."""

    async def arm(timer: StartTimer) -> None:
        body = encode_event(fired_event(run_id, timer, trace_parent))
        subject = schedule_subject(run_id, timer.timer_id)
        await arm_schedule(js, INBOX_STREAM, subject, inbox_subject(run_id), timer.due, body)

    await asyncio.gather(*(arm(t) for t in timers))


async def cancel_timers(js: JetStreamContext, run_id: str, timer_ids: list[str]) -> None:
    """Purge the schedules of these timers (one that already fired is gone already)."""
    for timer_id in timer_ids:
        await cancel_schedule(js, INBOX_STREAM, schedule_subject(run_id, timer_id))


async def pending_timers(js: JetStreamContext, run_id: str) -> list[TimerFired]:
    """The run's armed timers, as the facts they will fire."""
    found = []
    async for msg in stored_batches(js, INBOX_STREAM, schedules_filter(run_id)):
        try:
            found.append(_DECODER.decode(msg.data or b""))
        except msgspec.DecodeError:
            continue
    return found
