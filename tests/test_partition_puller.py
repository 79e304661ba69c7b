"""A partition's puller handing its partition over, on a real nats-server: no fact is left
in the hands of the engine that lets go (the next owner would wait out the consumer's ack
wait, 30 s, for it)."""

from __future__ import annotations

import asyncio
import time

import nats
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from dagnats.infra.engine.inbox import INBOX_ACK_WAIT, PartitionPuller
from dagnats.infra.wire.names import INBOX_STREAM

from pull_support import until_queued

PARTITION = 3
SUBJECT = f"inbox.{PARTITION}.run-1"
# Well inside the ack wait: a fact that reaches the next owner later waited it out.
PROMPTLY = INBOX_ACK_WAIT / 3


class Received:
    """The facts each puller was handed, acked as they come (what the engine's actors do)."""

    def __init__(self) -> None:
        self.by: dict[str, str] = {}

    def dispatcher(self, name: str):
        def dispatch(msgs: list[Msg], partition: int) -> None:
            for msg in msgs:
                self.by[msg.data.decode()] = name
                asyncio.ensure_future(msg.ack())

        return dispatch

    async def all_of(self, facts: list[str], within: float = PROMPTLY) -> dict[str, str]:
        deadline = time.monotonic() + within
        while not set(facts) <= set(self.by) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return {fact: self.by.get(fact, "nobody") for fact in facts}


async def _inbox(url: str) -> tuple[nats.NATS, JetStreamContext]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name=INBOX_STREAM, subjects=["inbox.>"], retention=api.RetentionPolicy.WORK_QUEUE)
    return nc, js


async def _puller(js: JetStreamContext, received: Received, name: str) -> PartitionPuller:
    puller = PartitionPuller(js, PARTITION, received.dispatcher(name), lambda partition: True)
    await puller.start(fresh=False)
    return puller


def test_facts_published_while_a_busy_owner_hands_over_reach_the_next_owner_at_once(nats_url, run):
    """The old owner's actors are still busy (it settles for a while): what comes meanwhile
    goes to the next owner as soon as it pulls. Before, the fetch cancelled at the start of
    the hand-over left its pull request at the server, which sent the next fact to the
    subscription kept open while settling: read by no one, it came back after 30 s."""

    async def body() -> None:
        nc, js = await _inbox(nats_url)
        received = Received()
        old = await _puller(js, received, "old")
        await js.publish(SUBJECT, b"before")
        assert await received.all_of(["before"]) == {"before": "old"}
        await asyncio.sleep(0.2)  # its next fetch waits at the server
        old.in_flight = 1  # an actor still handling what it was handed
        asyncio.get_running_loop().call_later(1.0, lambda: setattr(old, "in_flight", 0))
        stopping = asyncio.create_task(old.stop(settle=5.0))
        during = [f"during-{n}" for n in range(5)]
        for fact in during:
            await asyncio.sleep(0.1)
            await js.publish(SUBJECT, fact.encode())
        await stopping
        new = await _puller(js, received, "new")
        assert await received.all_of(during) == {fact: "new" for fact in during}
        info = await js.consumer_info(INBOX_STREAM, f"engine-p{PARTITION}")
        assert info.num_ack_pending == 0 and info.num_pending == 0
        await new.stop()
        await nc.close()

    run(body(), timeout=60)


def test_a_fact_the_server_sent_after_the_last_fetch_is_handed_back_when_the_puller_stops(nats_url, run):
    """The server had already sent it (to the pull request the last fetch left behind) when
    the puller stopped: it is given back, not dropped with the subscription."""

    async def body() -> None:
        nc, js = await _inbox(nats_url)
        received = Received()
        old = await _puller(js, received, "old")
        await asyncio.sleep(0.2)  # its fetch waits at the server
        assert old._task is not None and old._sub is not None
        old._task.cancel()  # the fetch gone, its request still at the server
        await asyncio.wait([old._task])
        await js.publish(SUBJECT, b"stranded")
        await until_queued(old._sub)
        await old.stop()
        new = await _puller(js, received, "new")
        assert await received.all_of(["stranded"]) == {"stranded": "new"}
        await new.stop()
        await nc.close()

    run(body(), timeout=60)
