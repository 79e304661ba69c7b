"""Pull-consumer helpers shared by the engine and the worker."""

from __future__ import annotations

from nats.aio.msg import Msg


def more_pending(msgs: list[Msg]) -> bool:
    """Whether the consumer had more messages waiting after this batch.

    A batch pull on an empty queue lingers until the batch fills or the
    request expires, so loops ask for one message (returned the moment it
    arrives) unless the server said more are waiting.
    """
    meta = msgs[-1].metadata if msgs else None
    return bool(meta and meta.num_pending)
