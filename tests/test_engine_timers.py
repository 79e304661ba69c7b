"""Timers that end: cancelled when their run moves on, never waking a finished run,
recorded only when they lead somewhere; superseded tasks leave the queue.

The engine runs on a FakeClock here: the tests move time instead of sleeping.
"""

from __future__ import annotations

import asyncio

import msgspec
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import api

from dagnats.domain.events import TaskPayload
from dagnats.infra.wire.names import HISTORY_STREAM, TASK_STREAM
from dagnats.infra.wire.subjects import history_subject
from dagnats.infra.worker import TaskContext, Worker

from fakes import FakeClock
from harness import EngineHarness, FakeWorker

TIMED = {
    "name": "timed",
    "timeout": "1h",
    "steps": [{"id": "a", "task": "t-timed", "timeout": "10m"}],
}


async def _records(js, run_id: str) -> int:
    info = await js.stream_info(HISTORY_STREAM, subjects_filter=history_subject(run_id))
    return (info.state.subjects or {}).get(history_subject(run_id), 0)


def test_after_1000_finished_runs_with_timeouts_the_engine_holds_no_actor_and_no_timer(nats_url, run):
    clock = FakeClock()
    worker = Worker(nats_url, max_concurrent=100)

    @worker.task("t-timed")
    async def timed(ctx: TaskContext, n: int) -> int:
        await asyncio.sleep(0.06)  # long enough to report step.started: its timeout gets armed
        return n

    async def body():
        async with EngineHarness(nats_url, clock=clock) as h:
            await h.client.register(TIMED)
            await worker.start()
            slots = asyncio.Semaphore(200)

            async def one(n: int) -> str:
                async with slots:
                    return (await h.client.wait(await h.client.start("timed", n), timeout=120))["status"]

            try:
                statuses = await asyncio.gather(*(one(n) for n in range(1000)))
            finally:
                await worker.stop()
            await _eventually(lambda: _zero(h.engine.live_count))
            armed_after_runs = await h.engine.pending_timers()
            fired = clock.advance(2 * 3600)  # every step timeout and run deadline falls due
            await asyncio.sleep(0.5)  # let anything a fire started show up
            return statuses, armed_after_runs, fired, await h.engine.live_count()

    statuses, armed, fired, live = run(body(), timeout=240)
    assert statuses == ["completed"] * 1000
    assert armed == 0 and live == 0
    assert fired >= 1000  # the in-memory schedule did fall due, and nothing came of it


async def advance_until(clock: FakeClock, seconds: float, predicate, tries: int = 100) -> None:
    """Move the clock on ``seconds`` at a time (timers are armed asynchronously) until ``predicate``."""
    for _ in range(tries):
        if await predicate():
            return
        clock.advance(seconds)
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached while moving the clock")


async def _step_is(h: EngineHarness, run_id: str, step: str, status: str, attempts: int) -> bool:
    state = (await h.client.status(run_id))["steps"][step]
    return state["status"] == status and state["attempts"] == attempts


async def _zero(count) -> bool:
    return await count() == 0


async def _eventually(predicate, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.05)


def test_a_running_soft_sticky_step_adds_no_history_while_its_worker_lives(nats_url, run):
    clock = FakeClock()
    release = asyncio.Event()
    worker = Worker(nats_url, worker_id="sticky-one")

    @worker.task("t-long")
    async def long(ctx: TaskContext) -> str:
        await release.wait()
        return "done"

    async def body():
        async with EngineHarness(nats_url, clock=clock) as h:
            await h.client.register({"name": "soft-long", "sticky": "soft", "steps": [{"id": "a", "task": "t-long"}]})
            await worker.start()
            try:
                run_id = await h.client.start("soft-long")
                await h.wait_step(run_id, "a", "running")
                js = h.nc.jetstream()
                before = await _records(js, run_id)
                for _ in range(10):  # twenty seconds of liveness checks
                    clock.advance(2.0)
                    await asyncio.sleep(0.1)
                during = await _records(js, run_id)
                release.set()
                final = await h.client.wait(run_id, timeout=10)
            finally:
                await worker.stop()
            return before, during, final

    before, during, final = run(body(), timeout=60)
    assert during == before
    assert final["status"] == "completed"


def test_a_timed_out_attempt_leaves_the_queue_and_no_worker_gets_it_later(nats_url, run):
    clock = FakeClock()

    async def body():
        async with EngineHarness(nats_url, clock=clock) as h:
            await h.client.register({"name": "superseded", "steps": [
                {"id": "a", "task": "t-sup", "timeout": "30s", "retry": {"max_attempts": 1}}]})
            run_id = await h.client.start("superseded")
            js = h.nc.jetstream()
            # A worker takes attempt 1, says it started, then dies without acking: the
            # task stays un-acked and would be handed out again after ack_wait.
            sub = await js.pull_subscribe("task.t-sup.*", durable="workers-t-sup", stream=TASK_STREAM,
                                          config=api.ConsumerConfig(ack_wait=1.0))
            first = msgspec.json.decode((await sub.fetch(1, timeout=5))[0].data, type=TaskPayload)
            await FakeWorker(h.nc, "t-sup").report(first, "step.started")
            await h.wait_step(run_id, "a", "running")
            # The step timeout fires: attempt 1 fails; its retry's backoff ends: attempt 2 is queued.
            await advance_until(clock, 31, lambda: _step_is(h, run_id, "a", "queued", attempts=2))
            seen = []
            for _ in range(3):  # past ack_wait: attempt 1 would come back now if still queued
                try:
                    msgs = await sub.fetch(1, timeout=1.5)
                except (NatsTimeoutError, asyncio.TimeoutError):
                    continue
                seen += [msgspec.json.decode(m.data, type=TaskPayload).attempt for m in msgs]
                for m in msgs:
                    await m.ack()
            return first.attempt, seen

    first_attempt, seen = run(body(), timeout=60)
    assert first_attempt == 1
    assert seen == [2]

