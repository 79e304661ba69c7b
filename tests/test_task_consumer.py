"""A worker's shared task consumer, and the HTTP worker bridge's, letting go, on a real
nats-server: a task the server sent after the last fetch goes to another worker at once, not
after the ack wait."""

from __future__ import annotations

import asyncio
import logging
import time

from nats.aio.msg import Msg

from dagnats.infra.http.workers import Bridge
from dagnats.infra.task_consumer import TaskConsumer

from pull_support import until_queued
from worker_support import engine_js, publish_task

ACK_WAIT = 30.0
PROMPTLY = ACK_WAIT / 3  # well inside the ack wait: a task that comes later waited it out


async def _handler(ctx, data):  # never called: the test fetches by hand
    return data


def test_a_task_sent_after_a_workers_last_fetch_goes_to_another_worker_when_it_lets_go(nats_url, run, caplog):
    async def body() -> None:
        nc, js = await engine_js(nats_url)
        leaving = TaskConsumer("tc", None, _handler)
        assert await leaving.ensure(js, ACK_WAIT, 5)
        # A fetch that stopped early (a stall, the worker stopping) left its request at the server.
        assert leaving.pull is not None and leaving.pull._sub is not None
        await _stranded(leaving.pull, lambda: publish_task(js, "tc", "run-1"))
        pending = leaving.pull._sub._pending_queue
        # The request's expiry (a status, no reply subject) may be queued too: not a task.
        pending.put_nowait(Msg(nc, subject="_INBOX.x", reply="", headers={"Status": "408"}))
        with caplog.at_level(logging.INFO, logger="dagnats.worker"):
            await leaving.release()
        assert leaving.pull is None
        assert "workers-tc: handing back 1 messages fetched as it stopped" in caplog.text
        await _next_worker_takes(js, "task.tc.run-1")
        await nc.close()

    run(body(), timeout=60)


async def _stranded(pull, publish) -> None:
    """Leave a request at the server (a fetch stopped early), then publish: the task lands in
    the subscription's queue, where no fetch will read it."""
    fetching = asyncio.ensure_future(pull.fetch(1, timeout=5))
    await asyncio.sleep(0.2)
    fetching.cancel()
    await asyncio.gather(fetching, return_exceptions=True)
    await publish()
    await until_queued(pull)


def test_the_http_bridge_closing_gives_back_a_task_sent_after_its_last_poll(nats_url, run):
    async def body() -> None:
        nc, js = await engine_js(nats_url)
        bridge = Bridge(js)
        pull = await bridge._sub("tc")  # as its first poll for the task makes it
        await _stranded(pull, lambda: publish_task(js, "tc", "run-2"))
        await bridge.close()
        await _next_worker_takes(js, "task.tc.run-2")
        await nc.close()

    run(body(), timeout=60)


async def _next_worker_takes(js, subject: str) -> None:
    """The next worker's first fetches get the task given back, well inside the ack wait."""
    worker = TaskConsumer("tc", None, _handler)
    assert await worker.ensure(js, ACK_WAIT, 5)
    deadline = time.monotonic() + PROMPTLY
    got = []
    while not got and time.monotonic() < deadline:
        got = await worker.fetch(1)
    assert [msg.subject for msg in got] == [subject]
    assert got[0].metadata.num_delivered == 2  # the first delivery went to the one that let go
    await got[0].ack()
    await worker.release()
