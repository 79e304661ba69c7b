"""The substrate's own limits, measured with nats-py alone (no engine code).

Two measurements, each against a fresh server carrying the engine's streams
(`ensure_resources`, so the same retention, storage and duplicate window):

* `round_trips`: one trip = publish to TASK_QUEUES (PubAck) -> pull it ->
  ack -> publish to WORKFLOW_HISTORY (PubAck) -> pull it back. Every loop
  has its own pair of consumers, so loops never take each other's messages.
* `publish_rate`: stored publishes to one stream (WORKFLOW_HISTORY), one
  at a time and many at a time: what one fsynced append costs, and how many
  appends one stream takes per second.
* `RawLoop`: the 3-step run without an engine. The driver (this process)
  publishes task 1 on ``task.raw.<run>``; the worker (bench/raw_worker.py,
  its own process) pulls it, acks and publishes the result on
  ``inbox.<run>``; the driver pulls the result, acks and publishes task 2;
  after the third result the run is done. This is what the engine adds its
  history, actors and API to.
"""

from __future__ import annotations

import asyncio
import os
import time

import msgspec
import nats
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import api

from dagnats.infra.engine.streams import ensure_resources
from dagnats.infra.wire.names import HISTORY_STREAM, INBOX_STREAM, TASK_STREAM

from .load import closed_loop
from .procs import PYTHON, CpuMeter, Processes
from .stats import latency_summary, rate

# About the size of an engine task or fact (ids, attempt, trace parent, input).
PAYLOAD = msgspec.json.encode(
    {
        "run_id": "0" * 32,
        "step_id": "step",
        "attempt": 1,
        "task": "noop",
        "traceparent": "00-" + "0" * 32 + "-" + "0" * 16 + "-01",
        "input": {"n": 1, "text": "x" * 64},
    }
)
PULL_TIMEOUT = 5.0
DRIVER_BATCH = 256  # as the engine's inbox consumer


async def _connect(url: str):
    nc = await nats.connect(url, max_reconnect_attempts=3)
    js = nc.jetstream()
    await ensure_resources(js)
    return nc, js


# -- 1. round trips ---------------------------------------------------------------


async def round_trips(url: str, loops: int, trips_per_loop: int, max_seconds: float) -> dict:
    """`loops` concurrent trip loops, `trips_per_loop` trips each, stopped at `max_seconds`."""
    nc, js = await _connect(url)
    try:
        subs = [await _trip_consumers(js, i) for i in range(loops)]
        latencies: list[float] = []
        deadline = time.perf_counter() + max_seconds

        async def loop(i: int) -> None:
            task_sub, history_sub = subs[i]
            for _ in range(trips_per_loop):
                if time.perf_counter() > deadline:
                    return
                began = time.perf_counter()
                await js.publish(f"task.rt.l{i}", PAYLOAD)
                (msg,) = await task_sub.fetch(1, timeout=PULL_TIMEOUT)
                await msg.ack()
                await js.publish(f"history.rt-l{i}", PAYLOAD)
                await history_sub.fetch(1, timeout=PULL_TIMEOUT)
                latencies.append(time.perf_counter() - began)

        began = time.perf_counter()
        await asyncio.gather(*(loop(i) for i in range(loops)))
        elapsed = time.perf_counter() - began
        return {
            "loops": loops,
            "trips_per_s": rate(len(latencies), elapsed),
            "elapsed_s": round(elapsed, 2),
            **latency_summary(latencies),
        }
    finally:
        await nc.close()


async def _trip_consumers(js, i: int):
    task_sub = await js.pull_subscribe(
        f"task.rt.l{i}",
        durable=f"rt-task-{i}",
        stream=TASK_STREAM,
        config=api.ConsumerConfig(ack_wait=30),
    )
    history_sub = await js.pull_subscribe(
        f"history.rt-l{i}",
        durable=f"rt-history-{i}",
        stream=HISTORY_STREAM,
        config=api.ConsumerConfig(ack_policy=api.AckPolicy.NONE, deliver_policy=api.DeliverPolicy.NEW),
    )
    return task_sub, history_sub


async def publish_rate(url: str, publishers: int, per_publisher: int, max_seconds: float) -> dict:
    """Stored (PubAck'd) publishes to ONE stream, `publishers` at a time: the append ceiling."""
    nc, js = await _connect(url)
    try:
        latencies: list[float] = []
        deadline = time.perf_counter() + max_seconds

        async def publisher(i: int) -> None:
            for _ in range(per_publisher):
                if time.perf_counter() > deadline:
                    return
                began = time.perf_counter()
                await js.publish(f"history.pub-{i}", PAYLOAD)
                latencies.append(time.perf_counter() - began)

        began = time.perf_counter()
        await asyncio.gather(*(publisher(i) for i in range(publishers)))
        elapsed = time.perf_counter() - began
        return {
            "publishers": publishers,
            "publishes_per_s": rate(len(latencies), elapsed),
            "elapsed_s": round(elapsed, 2),
            **latency_summary(latencies),
        }
    finally:
        await nc.close()


# -- 2. the raw 3-step loop ---------------------------------------------------------


class RawLoop:
    """Driver of 3-step runs over the raw worker process; see the module docstring."""

    STEPS = 3

    def __init__(self, procs: Processes, url: str, name: str) -> None:
        self.procs, self.url, self.name = procs, url, name
        self.pending: dict[str, list] = {}  # run id -> [steps done, future]
        self._serial = 0
        self._handling: set[asyncio.Task] = set()  # asyncio keeps only weak references to tasks

    async def __aenter__(self) -> RawLoop:
        self.nc, self.js = await _connect(self.url)
        self.worker = self.procs.child(
            f"{self.name}-worker",
            [PYTHON, "-m", "bench.raw_worker", "--nats-url", self.url, "--concurrency", "100"],
        )
        await asyncio.to_thread(self.worker.wait_for, "raw worker ready", 30)
        self.sub = await self.js.pull_subscribe(
            "inbox.>",
            durable="raw-driver",
            stream=INBOX_STREAM,
            config=api.ConsumerConfig(ack_wait=30, max_ack_pending=50_000, max_deliver=-1),
        )
        self._running = True
        self._consumer = asyncio.create_task(self._consume())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._running = False
        self._consumer.cancel()
        await asyncio.gather(self._consumer, return_exceptions=True)
        await self.nc.close()
        self.procs.stop(self.worker)

    async def _consume(self) -> None:
        while self._running:
            try:
                msgs = await self.sub.fetch(DRIVER_BATCH, timeout=1.0)
            except (TimeoutError, NatsTimeoutError):
                continue
            for msg in msgs:
                task = asyncio.create_task(self._on_result(msg))
                self._handling.add(task)
                task.add_done_callback(self._handling.discard)

    async def _on_result(self, msg) -> None:
        await msg.ack()
        run_id = msg.subject.rsplit(".", 1)[1]  # inbox.<partition>.<run>: the stream files it by partition
        entry = self.pending.get(run_id)
        if entry is None:
            return
        entry[0] += 1
        if entry[0] < self.STEPS:
            await self.js.publish(f"task.raw.{run_id}", PAYLOAD)
        elif not entry[1].done():
            entry[1].set_result(time.perf_counter())

    async def run_once(self, timeout: float) -> float:
        """One 3-step run; its latency in seconds (raises TimeoutError past `timeout`)."""
        self._serial += 1
        run_id = f"r{self._serial}"
        done = asyncio.get_running_loop().create_future()
        self.pending[run_id] = [0, done]
        began = time.perf_counter()
        try:
            await self.js.publish(f"task.raw.{run_id}", PAYLOAD)
            finished = await asyncio.wait_for(done, timeout)
        finally:
            del self.pending[run_id]
        return finished - began


async def raw_loop(
    procs: Processes,
    server,
    name: str,
    *,
    runs: int,
    sequential_runs: int,
    concurrency: int,
    warmup: int,
    max_seconds: float,
) -> dict:
    """The raw 3-step loop: loaded (`concurrency` in flight) and unloaded (one at a time)."""
    async with RawLoop(procs, server.url, name) as loop:
        one = lambda: loop.run_once(timeout=30)  # noqa: E731
        await closed_loop(one, warmup, min(warmup, concurrency), max_seconds)
        meter = CpuMeter({"nats-server": server.pid, "raw worker": loop.worker.pid, "driver (bench)": os.getpid()})
        loaded = await closed_loop(one, runs, concurrency, max_seconds)
        loaded["cpu_percent"] = meter.read()
        unloaded = await closed_loop(one, sequential_runs, 1, max_seconds)
    return {"loaded": loaded, "unloaded": unloaded}
