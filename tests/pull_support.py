"""A message left in a pull subscription's hands: sent by the server to the request a stopped
fetch left behind, queued where no fetch will read it (what ``wire.reading.let_go`` gives back)."""

from __future__ import annotations

import asyncio
import time

from nats.js import JetStreamContext


async def until_queued(pull: JetStreamContext.PullSubscription, within: float = 5.0) -> None:
    """Wait until the server has sent the subscription a message no fetch has read."""
    assert pull._sub is not None
    pending = pull._sub._pending_queue
    deadline = time.monotonic() + within
    while pending.empty() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert not pending.empty(), "the server sent nothing to the request left behind"
