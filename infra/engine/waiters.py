"""Event waiters: runs waiting for an external event, indexed by what would match them.

Theory of operation. Two kinds of waiter share one record (``Waiter``) and
one key layout in the KV bucket ``event_waiters``: a wait_for_event step
(its slot is the step id) and a run's cancel_on entry (slot ``cancel=<i>``;
``=`` cannot occur in a step id, so the two never collide). The key says
which events can match, so the correlator looks waiters up instead of
scanning every waiter of an event name:

    <event>.eq.<digest(left)>.<digest(index_text(right))>.<run>.<slot>
    <event>.cmp.<run>.<slot>       every other operator (ne lt lte gt gte)
    <event>.all.<run>.<slot>       a cancel_on without a match
    <event>.path.<digest(left)>    -> left: the dot-paths eq waiters read

For an event E with data D the candidates are ``E.all.>``, ``E.cmp.>`` and,
for each registered path p, ``E.eq.<digest(p)>.<digest(index_text(D at p))>.>``:
a subject filter each, so the server reads only those entries. Candidates
are then checked with ``compare`` itself; the index only narrows.

``index_text`` merges the values ``compare`` may call equal (42, 42.0, "42"
and "42.0" share a key; 42 equals "42" because eq falls back to text), so a
match is never missed; the final compare rejects the extras. Removing a
waiter purges its subject instead of writing a delete marker: markers would
stay on ``E.cmp.>`` and ``E.all.>`` forever and every lookup would read them.

A step's waiter is stored a moment after its wait began (``since``, in the
run's history); an event published in that moment may reach the correlator
before the waiter does. So registering reads the events stored since then
once, and hands the step the first that matches.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError

from dagnats.domain import events as ev
from dagnats.domain.actions import RegisterWaiter, RemoveWaiter
from dagnats.domain.conditions import compare, value_text
from dagnats.domain.paths import PathNotFound, extract_dot_path

from ..wire.facts import publish_fact
from ..wire.headers import STORED_AT
from ..wire.names import EVENT_STREAM, WAITERS_BUCKET
from ..wire.reading import kv_entries, stored_batches
from ..wire.subjects import event_subject

log = logging.getLogger("dagnats.waiters")

_ENCODER = msgspec.json.Encoder()


class Waiter(msgspec.Struct, frozen=True, omit_defaults=True):
    """A run waiting for event ``event``: a wait_for_event step (``step_id``, ``attempt``)
    or, without a step id, a cancel_on entry. ``op`` empty: any event of the name."""

    run_id: str
    event: str
    slot: str
    step_id: str = ""
    attempt: int = 0
    left: str = ""
    op: str = ""
    right: Any = None
    since: str = ""
    expires_at: str = ""

    @property
    def cancels(self) -> bool:
        return not self.step_id

    def expired(self, at: datetime) -> bool:
        return bool(self.expires_at) and at > ev.parse_timestamp(self.expires_at)

    def matches(self, data: Any, at: datetime) -> bool:
        """Whether an event with ``data``, published at ``at``, is the one this waiter waits for."""
        if self.since and at < ev.parse_timestamp(self.since):
            return False
        if not self.op:
            return True
        try:
            return compare(self.op, extract_dot_path(data, self.left), self.right)
        except (PathNotFound, OverflowError):  # an int too large for a float compares as nothing
            return False


WAITER_DECODER = msgspec.json.Decoder(Waiter)


def cancel_slot(index: int) -> str:
    return f"cancel={index}"


def digest(text: str) -> str:
    """A short, key-safe digest of any text (a path, a value)."""
    return hashlib.blake2b(text.encode(), digest_size=10).hexdigest()


_JSON_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")


def index_text(value: Any) -> str:
    """The text ``eq`` values are indexed by: numbers, and strings that spell one,
    by their float value (42, 42.0, "42", "4.2e1" alike); anything else by its JSON text."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return value_text(value)
    if isinstance(value, str) and not _JSON_NUMBER.fullmatch(value):
        return value
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if math.isinf(number):  # beyond a float: equal only as text, which compare falls back to
        return value if isinstance(value, str) else value_text(value)
    return str(int(number)) if number.is_integer() else repr(number)


def waiter_key(waiter: Waiter) -> str:
    head, tail = waiter.event, f"{waiter.run_id}.{waiter.slot}"
    if not waiter.op:
        return f"{head}.all.{tail}"
    if waiter.op == "eq":
        return f"{head}.eq.{digest(waiter.left)}.{digest(index_text(waiter.right))}.{tail}"
    return f"{head}.cmp.{tail}"


def path_key(event: str, path: str) -> str:
    return f"{event}.path.{digest(path)}"


# ---- writing ---------------------------------------------------------------------------


async def put_waiter(js: JetStreamContext, waiter: Waiter) -> None:
    """Store ``waiter`` under its key (again: the same key, the same record)."""
    kv = await js.key_value(WAITERS_BUCKET)
    if waiter.op == "eq":
        # Before the waiter, so a correlator that finds the waiter knows its path.
        try:
            await kv.create(path_key(waiter.event, waiter.left), waiter.left.encode())
        except KeyWrongLastSequenceError:
            pass  # registered before
    await kv.put(waiter_key(waiter), _ENCODER.encode(waiter))


async def purge_waiters(js: JetStreamContext, pattern: str) -> None:
    """Forget every waiter whose key matches ``pattern``, leaving no delete marker."""
    await js.purge_stream(f"KV_{WAITERS_BUCKET}", subject=f"$KV.{WAITERS_BUCKET}.{pattern}")


async def register_step_waiter(js: JetStreamContext, run_id: str, waiter: RegisterWaiter) -> None:
    """Store the waiter of a wait_for_event step so the correlator finds it by event name."""
    record = Waiter(
        run_id=run_id,
        event=waiter.event,
        slot=waiter.step_id,
        step_id=waiter.step_id,
        attempt=waiter.attempt,
        left=waiter.left,
        op=waiter.op,
        right=waiter.right,
        since=waiter.since,
        expires_at=waiter.expires_at,
    )
    await put_waiter(js, record)
    await _hand_an_earlier_event(js, record)


async def _hand_an_earlier_event(js: JetStreamContext, waiter: Waiter) -> None:
    """The run records ``since`` before its outbox stores the waiter: an event published
    in between may have reached the correlator with no waiter to take it. Look for one
    among the events stored since (usually none: one request). If the correlator hands
    the step a later event at the same moment, the fact's id makes the first one win."""
    if not waiter.since:
        return
    since = ev.parse_timestamp(waiter.since)
    async for msg in stored_batches(js, EVENT_STREAM, event_subject(waiter.event), since=since):
        at = ev.parse_timestamp(msg.headers[STORED_AT]) if msg.headers and STORED_AT in msg.headers else since
        if waiter.expired(at):
            return
        data = event_data(msg.data or b"")
        if waiter.matches(data, at):
            await publish_fact(js, matched_fact(waiter, data, msg.seq or 0))
            await purge_waiters(js, waiter_key(waiter))
            return


async def remove_step_waiter(js: JetStreamContext, run_id: str, waiter: RemoveWaiter) -> None:
    """Forget a step's waiter (its wait ended another way: timeout, cancel)."""
    # Any path and value: the removal does not carry the left path, and a
    # wildcard purge needs neither.
    tail = f"{run_id}.{waiter.step_id}"
    await purge_waiters(js, f"{waiter.event}.eq.*.*.{tail}" if waiter.op == "eq" else f"{waiter.event}.cmp.{tail}")


# ---- matching ------------------------------------------------------------------------


def event_data(raw: bytes) -> Any:
    """An event's data: JSON, or else its text."""
    try:
        return msgspec.json.decode(raw) if raw else None
    except msgspec.DecodeError:
        return raw.decode(errors="replace")


def matched_fact(waiter: Waiter, data: Any, seq: int) -> ev.StepWaitMatched:
    """What a step's waiter reports to its run when event ``seq`` (``data``) matches."""
    return ev.StepWaitMatched(
        run_id=waiter.run_id,
        step_id=waiter.step_id,
        attempt=waiter.attempt,
        timestamp=ev.format_timestamp(datetime.now(UTC)),
        payload=ev.EventMatch(data=data, seq=seq),
        id=ev.fact_id(ev.STEP_WAIT_MATCHED, waiter.step_id, waiter.attempt),
    )


# ---- reading ---------------------------------------------------------------------------


async def candidates(js: JetStreamContext, event: str, data: Any) -> list[tuple[str, Waiter]]:
    """(key, waiter) of every waiter an event named ``event`` with ``data`` may match."""
    patterns = [f"{event}.all.>", f"{event}.cmp.>"]
    for _, raw in await kv_entries(js, WAITERS_BUCKET, f"{event}.path.*"):
        path = raw.decode()
        try:
            value = extract_dot_path(data, path)
        except PathNotFound:
            continue
        patterns.append(f"{event}.eq.{digest(path)}.{digest(index_text(value))}.>")
    found: list[tuple[str, Waiter]] = []
    for pattern in patterns:
        found.extend(await waiters_at(js, pattern))
    return found


async def waiters_at(js: JetStreamContext, pattern: str) -> list[tuple[str, Waiter]]:
    """(key, waiter) of every waiter whose key matches ``pattern`` (a waiter's key, not a path's)."""
    found = []
    for key, raw in await kv_entries(js, WAITERS_BUCKET, pattern):
        try:
            found.append((key, WAITER_DECODER.decode(raw)))
        except msgspec.DecodeError:
            log.warning("skipping unreadable waiter %s", key)
    return found


async def waiters_of(js: JetStreamContext, event: str = "*") -> list[tuple[str, Waiter]]:
    """(key, waiter) of every waiter of ``event`` (``*``: of every event)."""
    found = []
    for kind in ("all", "cmp", "eq"):
        found.extend(await waiters_at(js, f"{event}.{kind}.>"))
    return found
