"""The raw 3-step loop's worker, a process of its own (as the engine's worker is).

It pulls tasks from ``task.raw.*`` on TASK_QUEUES with at most ``--concurrency``
in hand, acks each one and publishes its result to ``inbox.<run>`` on
RUN_INBOX, waiting for the PubAck. No engine, no SDK: the substrate's own cost.

    python -m bench.raw_worker --nats-url URL [--concurrency 100]

It prints "raw worker ready" once its consumer exists, and exits on SIGTERM,
when its parent goes away, or after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time

import nats
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import api

from dagnats.infra.wire.names import TASK_STREAM

TASK_FILTER = "task.raw.*"
CONSUMER = "raw-worker"
FETCH_TIMEOUT = 1.0


class RawWorker:
    def __init__(self, js, concurrency: int) -> None:
        self.js, self.free = js, concurrency
        self.slot_freed = asyncio.Event()
        self.tasks: set[asyncio.Task] = set()

    async def run(self, stop: asyncio.Event) -> None:
        sub = await self.js.pull_subscribe(
            TASK_FILTER,
            durable=CONSUMER,
            stream=TASK_STREAM,
            config=api.ConsumerConfig(ack_wait=30, max_ack_pending=10_000, max_deliver=-1),
        )
        print("raw worker ready", flush=True)
        while not stop.is_set():
            if not self.free:
                self.slot_freed.clear()
                await self.slot_freed.wait()
                continue
            try:
                msgs = await sub.fetch(self.free, timeout=FETCH_TIMEOUT)
            except (TimeoutError, NatsTimeoutError):
                continue
            self.free -= len(msgs)
            for msg in msgs:
                task = asyncio.create_task(self.handle(msg))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    async def handle(self, msg) -> None:
        try:
            await msg.ack()
            run_id = msg.subject.rsplit(".", 1)[1]
            await self.js.publish(f"inbox.{run_id}", msg.data)
        finally:
            self.free += 1
            self.slot_freed.set()


async def main(url: str, concurrency: int, max_seconds: float) -> None:
    nc = await nats.connect(url, max_reconnect_attempts=3)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    parent, deadline = os.getppid(), time.monotonic() + max_seconds

    async def watchdog() -> None:
        while not stop.is_set():
            if os.getppid() != parent or time.monotonic() > deadline:
                stop.set()
            await asyncio.sleep(0.5)

    guard = asyncio.create_task(watchdog())
    try:
        await RawWorker(nc.jetstream(), concurrency).run(stop)
    finally:
        guard.cancel()
        await nc.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nats-url", required=True)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--max-seconds", type=float, default=1800.0)
    args = parser.parse_args()
    asyncio.run(main(args.nats_url, args.concurrency, args.max_seconds))
