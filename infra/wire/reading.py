"""Reading stored messages: the one way to walk a subject, and the pull loops' fetch.

``stored_messages`` yields the messages still stored on a subject (wildcards
allowed) in sequence order, straight from the stream leader, one request per
message: what a run's owner reads, since it must see its own last append.
``stored_batches`` yields the same, hundreds per request (batched direct get,
ADR-31, on streams that allow direct access): for readers, which may be
answered by a replica a moment behind. No consumer is made either way, so
reading costs the server nothing to clean up. ``kv_entries`` builds the live
keys of a bucket from its stream in batches (a KV watch can report its end
before it has delivered every entry).
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError, NoRespondersError
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import APIError, ServiceUnavailableError

from .lean import requester

_ENCODER = msgspec.json.Encoder()


async def stored_messages(
    js: JetStreamContext, stream: str, subject: str, after_seq: int = 0
) -> AsyncIterator[RawStreamMsg]:
    """The messages stored on ``subject`` after ``after_seq``, oldest first."""
    seq = after_seq + 1
    while True:
        msg = await next_stored(js, stream, subject, seq)
        if msg is None:
            return
        yield msg
        seq = (msg.seq or seq) + 1


class _Stored(msgspec.Struct):
    subject: str = ""
    seq: int = 0
    hdrs: str | None = None
    data: str | None = None
    time: str | None = None


class _GetAnswer(msgspec.Struct):
    message: _Stored | None = None
    error: dict[str, Any] | None = None


_GET_ANSWER = msgspec.json.Decoder(_GetAnswer)
NOT_FOUND = 404


async def next_stored(js: JetStreamContext, stream: str, subject: str, seq: int) -> RawStreamMsg | None:
    """The first message stored on ``subject`` at or after ``seq`` (None: there is none), as
    ``js.get_msg(stream, seq, subject, next=True)`` has it, read from the stream leader
    through the context's lean requests (``lean.requester``) and decoded with msgspec."""
    request = _ENCODER.encode({"seq": seq, "next_by_subj": subject})
    try:
        reply = await requester(js).request(f"{js._prefix}.STREAM.MSG.GET.{stream}", request, timeout=js._timeout)
    except NoRespondersError:
        raise ServiceUnavailableError from None  # as nats-py's get_msg
    answer = _GET_ANSWER.decode(reply.data)
    if answer.error is not None:
        if answer.error.get("code") == NOT_FOUND:  # no such message (or stream): as get_msg's NotFoundError
            return None
        APIError.from_error(answer.error)  # raises the error's kind, as get_msg does
    stored = answer.message
    if stored is None:
        raise APIError(description=f"no message in the answer to a get from {stream}")
    return RawStreamMsg(
        subject=stored.subject,
        seq=stored.seq,
        data=base64.b64decode(stored.data) if stored.data else None,
        headers=_headers(base64.b64decode(stored.hdrs)) if stored.hdrs else None,
        stream=stream,
        time=RawStreamMsg._parse_utc_iso(stored.time) if stored.time else None,
    )


def _headers(block: bytes) -> dict[str, str] | None:
    """A stored message's header block (``NATS/1.0`` then ``Name: value`` lines)."""
    headers: dict[str, str] = {}
    for line in block.decode().split("\r\n")[1:]:
        name, colon, value = line.partition(":")
        if colon and name.strip():
            headers[name.strip()] = value.strip()
    return headers or None


DIRECT_BATCH = 256
_DIRECT_TIMEOUT = 5.0


async def stored_batches(
    js: JetStreamContext,
    stream: str,
    subject: str,
    after_seq: int = 0,
    batch: int = DIRECT_BATCH,
    since: datetime | None = None,
) -> AsyncIterator[RawStreamMsg]:
    """The messages stored on ``subject`` after ``after_seq`` (or, given ``since``, stored
    at or after that instant), oldest first, fetched in batches."""
    nc = js._nc  # nats-py has no batched direct get of its own: the request is made here
    seq = after_seq + 1
    position: dict[str, Any] = {"start_time": since.astimezone(UTC).isoformat()} if since else {"seq": seq}
    while True:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        try:
            request = _ENCODER.encode({**position, "next_by_subj": subject, "batch": batch})
            await nc.publish(f"$JS.API.DIRECT.GET.{stream}", request, reply=inbox)
            pending, last = 0, seq - 1
            while True:
                msg = await sub.next_msg(timeout=_DIRECT_TIMEOUT)
                headers = msg.headers or {}
                status = headers.get("Status")
                if status == "503":  # the stream does not allow direct gets: one by one (from after_seq)
                    async for stored in stored_messages(js, stream, subject, seq - 1):
                        yield stored
                    return
                if status:  # 204 end of batch, 404 nothing (more) stored
                    pending = int(headers.get("Nats-Num-Pending") or 0) if status == "204" else 0
                    break
                last = int(headers["Nats-Sequence"])
                yield RawStreamMsg(
                    subject=headers.get("Nats-Subject"), seq=last, data=msg.data, headers=headers, stream=stream
                )
        finally:
            await sub.unsubscribe()
        if not pending:
            return
        seq = last + 1
        position = {"seq": seq}


async def first_message(js: JetStreamContext, stream: str, subject: str) -> RawStreamMsg | None:
    """The oldest message still stored on ``subject``, if any."""
    async for msg in stored_messages(js, stream, subject):
        return msg
    return None


async def kv_entries(js: JetStreamContext, bucket: str, pattern: str) -> list[tuple[str, bytes]]:
    """(key, value) of every live key of ``bucket`` matching ``pattern``."""
    prefix = f"$KV.{bucket}."
    entries: dict[str, bytes] = {}
    async for msg in stored_batches(js, f"KV_{bucket}", f"{prefix}{pattern}"):
        key = (msg.subject or "")[len(prefix) :]
        operation = (msg.headers or {}).get("KV-Operation")
        if operation in ("DEL", "PURGE") or not msg.data:
            entries.pop(key, None)
        else:
            entries[key] = msg.data
    return list(entries.items())


def more_pending(msgs: list[Msg]) -> bool:
    """Whether the consumer had more messages waiting after this batch.

    A batch pull on an empty queue lingers until the batch fills or the
    request expires, so loops ask for one message (returned the moment it
    arrives) unless the server said more are waiting.
    """
    meta = msgs[-1].metadata if msgs else None
    return bool(meta and meta.num_pending)


PULL_TIMEOUT = 1.0  # seconds a pull loop's fetch lingers for a message
PULL_RETRY = 0.5  # seconds a pull loop waits after a failed fetch


async def pulled(
    sub: JetStreamContext.PullSubscription, batch: int, what: str, log: logging.Logger
) -> list[Msg] | None:
    """One fetch of a pull loop: the messages; [] if none came within a second, or the
    fetch failed (logged as ``what`` failing, then waited out: reconnects, leader
    changes, a consumer taken over); None once the connection is closed for good.

    A loop ends on None or on a flag its ``stop`` sets, not on cancellation alone: on
    Python 3.11 ``asyncio.wait_for`` (inside nats-py's fetch) can drop a cancellation
    that arrives with a message, and a fetch cancelled on a closed connection raises
    ``ConnectionClosedError`` instead of the cancellation."""
    try:
        return await sub.fetch(batch, timeout=PULL_TIMEOUT)
    except TimeoutError:  # nats-py's own TimeoutError is one
        return []
    except ConnectionClosedError:
        return None
    except Exception as err:  # noqa: BLE001 - the loop must outlive any one failure
        log.warning("%s failed: %s", what, err)
        await asyncio.sleep(PULL_RETRY)
        return []


JS_ACK_PREFIX = "$JS.ACK."  # the reply subject of a message a consumer delivered


async def let_go(pull: JetStreamContext.PullSubscription, what: str, log: logging.Logger) -> None:
    """Unsubscribe a pull loop's subscription, its loop stopped, leaving no message in its
    hands. A fetch stopped may have left its pull request at the server, which goes on
    sending to the subscription until the request is filled or expires; what it sends then
    is never read, and its consumer redelivers it only after the ack wait (30 s). So: the
    server is told to stop first, a round trip makes sure all it sent before has arrived,
    and only then is the subscription closed and what it holds given back (a NAK:
    redelivered at once, to whoever pulls next). Quiet on a closed connection."""
    sub = pull._sub
    if sub is None:
        return
    try:
        try:
            await sub._conn._send_unsubscribe(sub._id)
            await sub._conn.flush()
        finally:
            await pull.unsubscribe()  # the server ignores the second UNSUB
    except Exception as err:  # noqa: BLE001 - a closed connection has nothing left to drop
        log.debug("unsubscribing %s: %s", what, err)
    left = []
    while not sub._pending_queue.empty():
        msg = sub._pending_queue.get_nowait()
        if msg.reply.startswith(JS_ACK_PREFIX):  # not a status the server sent the request (408, 100)
            left.append(msg)
    if left:
        log.info("%s: handing back %d messages fetched as it stopped", what, len(left))
    await asyncio.gather(*(msg.nak() for msg in left), return_exceptions=True)
