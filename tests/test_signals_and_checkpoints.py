"""Handler state outside the run's history: checkpoints and signals, in their KV buckets.

A real Worker on a real nats-server. Signals are put where the control plane
puts them (``signals``, key ``<run>.<name>``, JSON); checkpoints are read
back by later attempts of the same step.
"""

from __future__ import annotations

import asyncio
import threading
import time

import msgspec
import pytest
from nats.js.errors import KeyNotFoundError

from dagnats.domain.errors import InvalidIdentifier
from dagnats.domain.events import parse_timestamp
from dagnats.infra.wire.keys import checkpoint_key, signal_key
from dagnats.infra.wire.names import CHECKPOINTS_BUCKET, SIGNALS_BUCKET
from dagnats.infra.worker import Continue, SignalTimeout, TaskContext, Worker

from worker_support import Inbox, drained, engine_js, eventually, publish_task, running


async def send_signal(js, run_id: str, name: str, data) -> None:
    """What `dagnats run signal RUN NAME DATA` writes."""
    kv = await js.key_value(SIGNALS_BUCKET)
    await kv.put(signal_key(run_id, name), msgspec.json.encode(data))


# -- checkpoints --------------------------------------------------------------------------


def test_a_retried_attempt_reads_the_checkpoint_of_the_failed_one(nats_url, run):
    w = Worker(nats_url)
    seen: list = []

    @w.task("crunch")
    def crunch(ctx: TaskContext):
        seen.append(ctx.last_checkpoint())
        ctx.checkpoint({"done": ctx.attempt})
        if ctx.attempt == 1:
            raise RuntimeError("crashed after saving progress")
        return "finished"

    async def body():
        nc, js = await engine_js(nats_url)
        async with running(w):
            inbox = await Inbox.open(js, "r1")
            await publish_task(js, "crunch", "r1")
            failed = await inbox.result()
            await publish_task(js, "crunch", "r1", attempt=2)
            completed = await inbox.result()
        kv = await js.key_value(CHECKPOINTS_BUCKET)
        stored = msgspec.json.decode((await kv.get("r1.s1")).value)
        await nc.close()
        return failed, completed, stored

    failed, completed, stored = run(body())
    assert (failed.type, completed.type, completed.payload) == ("step.failed", "step.completed", "finished")
    assert seen == [None, {"done": 1}]
    assert stored == {"done": 2}


def test_the_next_agent_loop_iteration_reads_the_checkpoint_from_an_async_handler(nats_url, run):
    w = Worker(nats_url)

    @w.task("agent")
    async def agent(ctx: TaskContext, question: str):
        notes = await ctx.last_checkpoint() or []
        notes.append(f"{question}@{ctx.iteration}")
        await ctx.checkpoint(notes)
        return Continue("why?") if ctx.iteration == 0 else notes

    async def body():
        nc, js = await engine_js(nats_url)
        async with running(w):
            inbox = await Inbox.open(js, "r1")
            await publish_task(js, "agent", "r1", "what?", step_type="agent_loop")
            continued = await inbox.result()
            await publish_task(js, "agent", "r1", continued.payload, attempt=2, iteration=1, step_type="agent_loop")
            completed = await inbox.result()
        await nc.close()
        return continued, completed

    continued, completed = run(body())
    assert (continued.type, continued.payload) == ("step.continue", "why?")
    assert completed.payload == ["what?@0", "why?@1"]


def test_map_instances_keep_their_own_checkpoints_and_bad_data_is_refused(nats_url, run):
    w = Worker(nats_url)

    @w.task("part")
    def part(ctx: TaskContext):
        before = ctx.last_checkpoint()
        ctx.checkpoint(ctx.instance)
        try:
            ctx.checkpoint({"at": object()})
        except TypeError as err:
            return [before, str(err)]
        return [before, None]

    async def body():
        nc, js = await engine_js(nats_url)
        async with running(w):
            inbox = await Inbox.open(js, "r1")
            outputs = []
            for attempt, instance in ((1, 0), (1, 1), (2, 1)):
                await publish_task(js, "part", "r1", step_id="m", attempt=attempt, instance=instance)
                outputs.append((await inbox.result()).payload)
        await nc.close()
        return outputs

    first, second, retried = run(body())
    assert first[0] is None and second[0] is None
    assert retried[0] == 1
    assert first[1].startswith("checkpoint of step m does not encode as JSON")
    assert checkpoint_key("r1", "m", 1) == "r1.m.1"


# -- signals ----------------------------------------------------------------------------------


def test_a_signal_sent_before_the_wait_is_returned_at_once_and_consumed(nats_url, run):
    w = Worker(nats_url)

    @w.task("approve")
    def approve(ctx: TaskContext):
        return ctx.wait_for_signal("go", timeout=10)

    async def body():
        nc, js = await engine_js(nats_url)
        async with running(w):
            inbox = await Inbox.open(js, "r1")
            await send_signal(js, "r1", "go", {"ok": True})
            await publish_task(js, "approve", "r1")
            facts = await inbox.until("step.completed")
        kv = await js.key_value(SIGNALS_BUCKET)
        with pytest.raises(KeyNotFoundError):
            await kv.get("r1.go")
        await nc.close()
        return facts

    facts = run(body())
    assert [f.type for f in facts if f.type != "step.started"] == ["step.completed"]  # never waited
    assert facts[-1].payload == {"ok": True}


def test_a_waiting_handler_reports_step_waiting_once_and_each_wait_takes_a_new_signal(nats_url, run):
    w = Worker(nats_url)

    @w.task("chat")
    async def chat(ctx: TaskContext):
        return [await ctx.wait_for_signal("msg", timeout=10) for _ in range(2)]

    async def body():
        nc, js = await engine_js(nats_url)
        async with running(w):
            inbox = await Inbox.open(js, "r1")
            await send_signal(js, "r1", "msg", "first")
            began = time.time()
            await publish_task(js, "chat", "r1")
            waiting = [f for f in await inbox.until("step.waiting")][-1]
            await send_signal(js, "r1", "msg", "second")
            rest = await inbox.until("step.completed")
        await nc.close()
        return began, waiting, rest

    began, waiting, rest = run(body())
    assert waiting.id == "s1.1.step.waiting"
    assert (waiting.payload.kind, waiting.payload.name) == ("signal", "msg")
    assert began + 9 < parse_timestamp(waiting.payload.due).timestamp() < time.time() + 10
    assert [f.type for f in rest if f.type != "step.started"] == ["step.completed"]
    assert rest[-1].payload == ["first", "second"]


def test_wait_for_signal_times_out_with_a_clear_error_and_refuses_a_bad_name(nats_url, run):
    w = Worker(nats_url)
    errors: list[Exception] = []

    @w.task("patient")
    def patient(ctx: TaskContext):
        for name in ("no.dots", "late"):
            try:
                ctx.wait_for_signal(name, timeout=0.3)
            except Exception as err:  # noqa: BLE001 - asserted on below
                errors.append(err)
        return ctx.wait_for_signal("late", timeout=0.2)  # not caught: fails the attempt

    async def body():
        nc, js = await engine_js(nats_url)
        async with running(w):
            inbox = await Inbox.open(js, "r1")
            started = time.monotonic()
            await publish_task(js, "patient", "r1")
            facts = await inbox.until("step.failed")
            elapsed = time.monotonic() - started
            await eventually(lambda: drained(js))
        await nc.close()
        return facts, elapsed

    facts, elapsed = run(body())
    bad_name, timed_out = errors
    assert isinstance(bad_name, InvalidIdentifier) and bad_name.kind == "signal name"
    assert isinstance(timed_out, SignalTimeout) and isinstance(timed_out, TimeoutError)
    assert (timed_out.run_id, timed_out.step_id, timed_out.name, timed_out.timeout) == ("r1", "s1", "late", 0.3)
    assert str(timed_out) == "run r1 step s1: signal 'late' did not arrive within 0.3 s"
    assert 0.5 <= elapsed < 5
    # The bad name never waited; each real wait reported once, under its own id.
    assert [f.id for f in facts if f.type == "step.waiting"] == ["s1.1.step.waiting", "s1.1.step.waiting.2"]
    assert facts[-1].type == "step.failed"
    failed = facts[-1].failure
    assert failed.failure_type == "transient"
    assert failed.error == "SignalTimeout: run r1 step s1: signal 'late' did not arrive within 0.2 s"


def test_two_waiters_for_one_signal_one_gets_it(nats_url, run):
    w = Worker(nats_url)

    @w.task("race")
    async def race(ctx: TaskContext):
        try:
            return await ctx.wait_for_signal("token", timeout=1.5)
        except SignalTimeout:
            return None

    async def body():
        nc, js = await engine_js(nats_url)
        async with running(w):
            inbox = await Inbox.open(js, "r1")
            for step in ("a", "b"):
                await publish_task(js, "race", "r1", step_id=step)
            await inbox.until("step.waiting")
            await inbox.until("step.waiting")
            await send_signal(js, "r1", "token", 42)
            outputs = sorted([(await inbox.result()).payload for _ in range(2)], key=str)
        await nc.close()
        return outputs

    assert run(body()) == [42, None]


def test_a_sync_handler_stopped_mid_wait_stops_waiting_and_leaves_the_signal(nats_url, run):
    w = Worker(nats_url, drain_timeout=0.2)
    ended: list[str] = []
    done = threading.Event()

    @w.task("hold")
    def hold(ctx: TaskContext):
        try:
            return ctx.wait_for_signal("go", timeout=30)
        except BaseException as err:
            ended.append(type(err).__name__)
            raise
        finally:
            done.set()

    async def body():
        nc, js = await engine_js(nats_url)
        inbox = await Inbox.open(js, "r1")
        await w.start()
        await publish_task(js, "hold", "r1")
        await inbox.until("step.waiting")
        await w.stop()  # the task goes back to the queue; its handler's thread must not wait on
        released = await asyncio.to_thread(done.wait, 5)
        await send_signal(js, "r1", "go", "later")
        kv = await js.key_value(SIGNALS_BUCKET)
        still_there = msgspec.json.decode((await kv.get("r1.go")).value)
        await nc.close()
        return released, still_there

    assert run(body()) == (True, "later")
    assert ended == ["CancelledError"]
