"""Results handed straight to a run's owner: `dagnats.handoff.<partition>`, request/reply.

A worker's result would otherwise be stored twice: once in the run's inbox, once
in its history. Each task names the subject of its run's partition
(``Dagnats-Handoff``); the worker sends its result there as a request, and the
engine that owns the partition records it like any inbox fact and answers once
the record (and what it dispatched) is stored. Only then does the worker
acknowledge its task: a result lost on the way (no owner, a timeout, an engine
killed before it answered, a report ahead of its dispatch) leaves the task
unacknowledged, and the worker falls back to the run's inbox, so nothing is lost;
a result recorded twice is the same fact, folded once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from dagnats.actors.messages import Deliver, Deliveries, bundled
from dagnats.domain.events import WORKFLOW_STARTED, Event, decode_event
from dagnats.domain.partition import partition_of

from ..wire.handoff import HANDED, NOT_STORED, REPEATED, STORED
from ..wire.lean import handle_at_once, publish_now
from ..wire.subjects import handoff_subject
from .bridge import LoopPost, poster

log = logging.getLogger("dagnats.handoff")
# How a handed fact is answered, STORED, REPEATED or NOT_STORED: a reply to send, or a
# local future to set.
Answer = Callable[[bytes], None]


class Handoff:
    """Subscribed to the handoff subject of each partition this engine holds."""

    def __init__(
        self,
        nc: NATS,
        partitions: int,
        deliver: Callable[[Deliver | Deliveries], None],
        holds: Callable[[int], bool],
        sanitized: Callable[[Event], Event],
    ) -> None:
        self.nc, self.partitions = nc, partitions
        self.deliver, self.holds, self.sanitized = deliver, holds, sanitized
        self._subs: dict[int, Subscription] = {}
        # Per run, the facts handed over and how to answer each (a request, or a local future).
        self._batches: dict[str, list[tuple[Event, Answer]]] = {}
        # Starts of runs that already have a batch: each delivered after it, alone.
        self._starts: list[tuple[str, list[tuple[Event, Answer]]]] = []

    async def open(self, partition: int) -> None:
        if partition not in self._subs:
            sub = self._subs[partition] = await self.nc.subscribe(handoff_subject(partition))
            handle_at_once(sub, partial(self._received, partition=partition))

    async def close(self, partition: int) -> None:
        sub = self._subs.pop(partition, None)
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception as err:  # noqa: BLE001 - a closed connection has nothing left to drop
                log.debug("unsubscribing handoff %d: %s", partition, err)

    async def close_all(self) -> None:
        for partition in list(self._subs):
            await self.close(partition)

    def _received(self, msg: Msg, partition: int) -> None:
        """A handed fact, as the connection reads it (``handle_at_once``)."""
        try:
            event = decode_event(msg.data)
        except msgspec.DecodeError:
            _answer(msg, NOT_STORED)
            return
        if not self._takes(event, partition):
            _answer(msg, NOT_STORED)  # the worker falls back to the run's inbox
            return
        self._add(event, partial(_answer, msg))

    def here(self, event: Event) -> asyncio.Future[bytes] | None:
        """Hand a fact over within this process (a start the control plane took for a run
        whose partition this engine holds): the same path as a request, with no round trip
        through the server. None if this engine does not hold the run's partition; else a
        future of the answer a request would get (STORED, REPEATED or NOT_STORED)."""
        partition = partition_of(event.run_id, self.partitions) if event.run_id else -1
        if partition not in self._subs or not self._takes(event, partition):
            return None
        stored: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        def answer(body: bytes) -> None:
            if not stored.done():
                stored.set_result(body)

        self._add(event, answer)
        return stored

    def _takes(self, event: Event, partition: int) -> bool:
        return (
            event.type in HANDED
            and bool(event.run_id)
            and partition_of(event.run_id, self.partitions) == partition
            and self.holds(partition)
        )

    def _add(self, event: Event, answer: Answer) -> None:
        # Facts of one run handed over together (a map's elements finishing at once) go to
        # its actor as one delivery, so they become one history record, as from the inbox;
        # the deliveries of every run that got facts meanwhile go to the directory at once.
        # A start opens a delivery of its own, whose answer says whether it started the run.
        if not self._batches:  # (a start waits in ``_starts`` only beside a batch of its run)
            asyncio.get_running_loop().call_soon(self._flush)
        item = (self.sanitized(event), answer)
        if event.type == WORKFLOW_STARTED and event.run_id in self._batches:
            self._starts.append((event.run_id, [item]))
        else:
            self._batches.setdefault(event.run_id, []).append(item)

    def _flush(self) -> None:
        batches, self._batches = self._batches, {}
        starts, self._starts = self._starts, []
        post = poster(asyncio.get_running_loop())
        deliveries = [_delivery(post, run_id, batch) for run_id, batch in [*batches.items(), *starts]]
        if deliveries:
            self.deliver(bundled(deliveries))


def _delivery(post: LoopPost, run_id: str, batch: list[tuple[Event, Answer]]) -> Deliver:
    answers = [answer for _, answer in batch]

    def done(ok: bool, retry_in: float = 0.5, repeated: bool = False) -> None:
        body = (REPEATED if repeated else STORED) if ok else NOT_STORED
        post(_answer_all, answers, body)

    return Deliver(run_id, tuple(event for event, _ in batch), done)


def _answer_all(answers: list[Answer], body: bytes) -> None:
    for answer in answers:
        answer(body)


def _answer(msg: Msg, body: bytes) -> None:
    """Reply at once; when the connection cannot take it now, through ``msg.respond``."""
    if not (msg.reply and publish_now(msg._client, msg.reply, body)):
        asyncio.ensure_future(_respond(msg, body))


async def _respond(msg: Msg, body: bytes) -> None:
    try:
        await msg.respond(body)
    except Exception as err:  # noqa: BLE001 - the worker times out and uses the inbox
        log.debug("answering a handoff: %s", err)
