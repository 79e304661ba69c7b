"""Reading stored messages: the one way to walk a subject, and the pull-loop hint.

``stored_messages`` yields the messages still stored on a subject (wildcards
allowed) in sequence order, straight from the stream: no consumer is made, so
reading costs the server nothing to clean up. ``kv_entries`` builds the live
keys of a bucket the same way (a KV watch can report its end before it has
delivered every entry).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError


async def stored_messages(js: JetStreamContext, stream: str, subject: str,
                          after_seq: int = 0) -> AsyncIterator[RawStreamMsg]:
    """The messages stored on ``subject`` after ``after_seq``, oldest first."""
    seq = after_seq + 1
    while True:
        try:
            msg = await js.get_msg(stream, seq=seq, subject=subject, next=True)
        except NotFoundError:
            return
        yield msg
        seq = (msg.seq or seq) + 1


async def first_message(js: JetStreamContext, stream: str, subject: str) -> RawStreamMsg | None:
    """The oldest message still stored on ``subject``, if any."""
    async for msg in stored_messages(js, stream, subject):
        return msg
    return None


async def kv_entries(js: JetStreamContext, bucket: str, pattern: str) -> list[tuple[str, bytes]]:
    """(key, value) of every live key of ``bucket`` matching ``pattern``."""
    prefix = f"$KV.{bucket}."
    entries: dict[str, bytes] = {}
    async for msg in stored_messages(js, f"KV_{bucket}", f"{prefix}{pattern}"):
        key = (msg.subject or "")[len(prefix):]
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
