"""Timers that end: cancelled (their schedules purged) when their run moves on, never
waking a finished run; superseded tasks leave the queue.

Timers here are NATS message schedules that fire on the server's clock, so these tests
use short real durations; the actor-level behaviour is tested on a fake clock in
test_actors.py.
"""

from __future__ import annotations

import asyncio

import msgspec
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import api

from dagnats.domain.events import TaskPayload
from dagnats.infra.wire.names import INBOX_STREAM, TASK_STREAM
from dagnats.infra.worker import TaskContext, Worker

from harness import EngineHarness, FakeWorker

TIMED = {
    "name": "timed",
    "timeout": "1h",
    "steps": [{"id": "a", "task": "t-timed", "timeout": "10m"}],
}


def test_after_1000_finished_runs_with_timeouts_the_engine_holds_no_actor_and_no_timer(nats_url, run):
    worker = Worker(nats_url, max_concurrent=100)

    @worker.task("t-timed")
    async def timed(ctx: TaskContext, n: int) -> int:
        await asyncio.sleep(0.06)  # long enough to report step.started: its timeout gets armed
        return n

    async def body():
        async with EngineHarness(nats_url) as h:
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
            await _eventually(lambda: _no_schedules(h.nc.jetstream()))  # cancelled: purged
            return statuses, await h.engine.pending_timers(), await h.engine.live_count()

    statuses, in_memory, live = run(body(), timeout=240)
    assert statuses == ["completed"] * 1000
    assert in_memory == 0 and live == 0


async def _no_schedules(js) -> bool:
    info = await js.stream_info(INBOX_STREAM, subjects_filter="schedule.>")
    return not info.state.subjects


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


def test_a_timed_out_attempt_leaves_the_queue_and_no_worker_gets_it_later(nats_url, run):
    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(
                {
                    "name": "superseded",
                    "steps": [{"id": "a", "task": "t-sup", "timeout": "1s", "retry": {"max_attempts": 1}}],
                }
            )
            run_id = await h.client.start("superseded")
            js = h.nc.jetstream()
            # A worker takes attempt 1, says it started, then dies without acking: the
            # task stays un-acked and would be handed out again after ack_wait.
            sub = await js.pull_subscribe(
                "task.t-sup.*", durable="workers-t-sup", stream=TASK_STREAM, config=api.ConsumerConfig(ack_wait=1.0)
            )
            first = msgspec.json.decode((await sub.fetch(1, timeout=5))[0].data, type=TaskPayload)
            await FakeWorker(h.nc, "t-sup").report(first, "step.started")
            await h.wait_step(run_id, "a", "running")
            # The step timeout fires: attempt 1 fails; its retry's backoff ends: attempt 2 is queued.
            await _eventually(lambda: _step_is(h, run_id, "a", "queued", attempts=2))
            seen = []
            for _ in range(3):  # past ack_wait: attempt 1 would come back now if still queued
                try:
                    msgs = await sub.fetch(1, timeout=1.5)
                except (TimeoutError, NatsTimeoutError):
                    continue
                seen += [msgspec.json.decode(m.data, type=TaskPayload).attempt for m in msgs]
                for m in msgs:
                    await m.ack()
            return first.attempt, seen

    first_attempt, seen = run(body(), timeout=60)
    assert first_attempt == 1
    assert seen == [2]


RETRY_LATER = {
    "name": "retry-later",
    "steps": [{"id": "a", "task": "t-later", "retry": {"max_attempts": 1, "initial_delay": "1h"}}],
}


def test_passivated_runs_waiting_on_timers_cost_no_actor_and_inspect_lists_their_timers(nats_url, run):
    async def body():
        async with EngineHarness(nats_url, max_live=2) as h:
            await h.client.register(RETRY_LATER)
            run_ids = [await h.client.start("retry-later", n) for n in range(20)]
            worker = FakeWorker(h.nc, "t-later")
            for _ in run_ids:
                await worker.fail("not now")
            for run_id in run_ids:
                await h.wait_step(run_id, "a", "retrying")
            inspected = await h.client.inspect(run_ids[0])
            info = await h.nc.jetstream().stream_info(INBOX_STREAM, subjects_filter="schedule.>")
            return await h.engine.live_count(), inspected, len(info.state.subjects or {})

    live, inspected, schedules = run(body(), timeout=60)
    assert live <= 2 and schedules == 20
    (timer,) = inspected["timers"]
    assert (timer["kind"], timer["step_id"], timer["attempt"]) == ("retry", "a", 1)
    assert timer["due"] == inspected["steps"]["a"]["retry_at"]


def test_a_timer_fires_once_across_engine_restarts(nats_url, run):
    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(
                {
                    "name": "retry-soon",
                    "steps": [{"id": "a", "task": "t-soon", "retry": {"max_attempts": 2, "initial_delay": "2s"}}],
                }
            )
            run_id = await h.client.start("retry-soon")
            await FakeWorker(h.nc, "t-soon").fail("first try fails")
            await h.wait_step(run_id, "a", "retrying")
        for _ in range(3):  # the engine goes away and comes back while the timer is pending
            async with EngineHarness(nats_url):
                pass
        async with EngineHarness(nats_url) as h:
            await FakeWorker(h.nc, "t-soon").complete("second try", timeout=15)
            final = await h.client.wait(run_id, timeout=15)
            return final, await h.client.events(run_id)

    final, events = run(body(), timeout=60)
    assert final["status"] == "completed" and final["steps"]["a"]["attempts"] == 2
    assert [e["type"] for e in events].count("timer.fired") == 1
    assert [(e["type"], e["attempt"]) for e in events if e["type"] == "step.queued"] == [
        ("step.queued", 1),
        ("step.queued", 2),
    ]
