"""Pulling a partition's inbox: one durable consumer per partition, ``engine-p<n>``.

A partition's consumer outlives its owners: whichever engine owns the partition
pulls from it, so a hand-over changes no consumer. When an engine takes over a
partition from one that died, it deletes and recreates the consumer: what the
dead engine had fetched and not acknowledged becomes deliverable at once rather
than after the acknowledgement wait, and a paused engine that wakes up finds
its subscription gone. Facts published before partitions existed (``inbox.<run>``,
two tokens) are pulled by the owner of partition 0 through ``engine-legacy``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError

from ..wire.names import INBOX_STREAM
from ..wire.reading import let_go, more_pending, pulled

log = logging.getLogger("dagnats.inbox")

FETCH_BATCH = 256
INBOX_ACK_WAIT = 30.0
LEGACY = -1  # the consumer of unpartitioned facts
OLD_CONSUMER = "engine"  # one consumer on inbox.> (before partitions): overlaps every partition's


def consumer_name(partition: int) -> str:
    return "engine-legacy" if partition == LEGACY else f"engine-p{partition}"


def partition_filter(partition: int) -> str:
    return "inbox.*" if partition == LEGACY else f"inbox.{partition}.*"


async def ensure_consumer(js: JetStreamContext, partition: int, fresh: bool = False) -> None:
    """Create the partition's consumer (``fresh``: drop what a dead owner held first)."""
    name = consumer_name(partition)
    if fresh:
        try:
            await js.delete_consumer(INBOX_STREAM, name)
        except NotFoundError:
            pass
    config = api.ConsumerConfig(
        durable_name=name,
        filter_subject=partition_filter(partition),
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=INBOX_ACK_WAIT,
        max_ack_pending=50_000,
        max_deliver=-1,
    )
    await js.add_consumer(INBOX_STREAM, config)


async def retire_old_consumer(js: JetStreamContext) -> None:
    """The consumer of an engine from before partitions filters ``inbox.>``: a work-queue
    stream refuses any other consumer while it exists."""
    try:
        await js.delete_consumer(INBOX_STREAM, OLD_CONSUMER)
        log.info("deleted the unpartitioned inbox consumer %r", OLD_CONSUMER)
    except NotFoundError:
        pass


class PartitionPuller:
    """Fetches one partition's facts while this engine holds it and hands them on."""

    def __init__(
        self,
        js: JetStreamContext,
        partition: int,
        dispatch: Callable[[list[Msg], int], None],
        holds: Callable[[int], bool],
    ) -> None:
        self.js, self.partition, self.dispatch, self.holds = js, partition, dispatch, holds
        self.in_flight = 0
        self._task: asyncio.Task | None = None
        self._sub: JetStreamContext.PullSubscription | None = None
        self._stopping = False

    async def start(self, fresh: bool) -> None:
        await ensure_consumer(self.js, self.partition, fresh)
        self._sub = await self.js.pull_subscribe_bind(consumer_name(self.partition), INBOX_STREAM)
        self._task = asyncio.create_task(self._pull(), name=f"inbox-{consumer_name(self.partition)}")

    async def stop(self, settle: float = 0.0) -> None:
        """Stop fetching, hand back what the server sent after the last fetch; with ``settle``,
        then wait (at most that long) for what was fetched to be handled."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=2.0)
        if self._sub is not None:
            await let_go(self._sub, f"partition {self.partition}", log)
        deadline = asyncio.get_running_loop().time() + settle
        while self.in_flight and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)

    async def _pull(self) -> None:
        assert self._sub is not None
        batch = 1
        while not self._stopping:
            # A batch pull on an empty queue lingers until the batch fills or the timeout
            # ends, so ask for one message unless the server said more wait.
            msgs = await pulled(self._sub, batch, f"inbox fetch on partition {self.partition}", log)
            if msgs is None:
                return
            if not msgs:
                continue
            if not self.holds(self.partition):
                # Fetched while the lease may have lapsed: back to whoever owns it now.
                for msg in msgs:
                    asyncio.ensure_future(msg.nak())
                await asyncio.sleep(0.2)
                continue
            batch = FETCH_BATCH if more_pending(msgs) else 1
            self.dispatch(msgs, self.partition)
