"""A reactive engine killed between storing a record and performing its effects; a message
its rules cannot read.

The kill -9 e2e tests (test_reactive_e2e) kill the process wherever it happens
to be; this one kills it at the narrowest place, on purpose: the record is in
the history, none of its effects happened (no message published, no state or
index written, no timer armed). ``_effects`` raising stands for the kill. A
ReactiveRuntime started afterwards on the same nats-server performs them:
the first record's review request and timeout, the last record's completion
event, and the run list's index entry, each once the history says so.
"""

from __future__ import annotations

import asyncio
import json

import nats
import reactive_support as s
from nats.js.errors import NotFoundError

from dagnats.domain.reactive.decide import execution_id
from dagnats.domain.reactive.events import ExecutionCreated, ExecutionEnded
from dagnats.infra.reactive.runtime import ReactiveRuntime
from dagnats.infra.reactive.store import load_execution
from dagnats.infra.reactive.views import execution_summaries

EXEC = execution_id("plan-review", "plan.r1")


class Killed(Exception):
    pass


def _killed_after_storing(runtime: ReactiveRuntime, event_type: type) -> list[int]:
    """Make ``runtime`` die right after storing the record holding ``event_type``."""
    effects, kills = runtime._effects, []

    async def effects_or_death(wf, ex, events):
        if any(isinstance(e, event_type) for e in events):
            kills.append(len(events))
            raise Killed
        await effects(wf, ex, events)

    runtime._effects = effects_or_death  # type: ignore[method-assign]
    return kills


async def _until(predicate, what: str, timeout: float = 20.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not (value := await predicate()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
    return value


def test_the_effects_of_a_stored_record_happen_after_a_kill_between_them(nats_url, run):
    async def body():
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        registry = await s.plan_review_setup(js)
        reviews, approved = [], []
        await nc.subscribe("plans.review", cb=_collect(reviews))
        await nc.subscribe("plans.approved", cb=_collect(approved))

        async def status():
            ex, _, _ = await load_execution(js, EXEC)
            return ex.status if ex.created else ""

        async def summary():
            return next((x for x in await execution_summaries(js) if x["run_id"] == EXEC), None)

        # 1. Killed after the first record (created + submit fired): nothing of it happened.
        first = ReactiveRuntime(nc, registry)
        kills = _killed_after_storing(first, ExecutionCreated)
        await first.start()
        await js.publish("plans.requests", json.dumps({"request_id": "r1", "plan": "p"}).encode())
        await _until(status, "the first record")
        await first.stop()
        await nc.flush()
        assert kills and reviews == [] and (await summary())["status"] == "pending"
        try:
            await (await js.key_value("plan_reviews")).get("plan.r1")
            raise AssertionError("the state was written")
        except NotFoundError:
            pass

        # 2. Restarted: the review request goes out, the timeout is armed, state and index written.
        # Killed again after the approval's record (callback, approve fired, ended).
        second = ReactiveRuntime(nc, registry)
        kills = _killed_after_storing(second, ExecutionEnded)
        await second.start()
        await _until(lambda: _value(reviews), "the review request")
        assert (await summary())["status"] == "waiting"
        assert (await js.get_last_msg("REACTIVE", f"reactive.schedule.{EXEC}")).data
        state = json.loads((await (await js.key_value("plan_reviews")).get("plan.r1")).value)
        assert state["status"] == "waiting" and state["phase"] == "reviewing"
        answer = {"task_id": reviews[0]["task_id"], "approved": True}
        await js.publish(reviews[0]["callback_subject"], json.dumps(answer).encode())
        assert await _until(status, "the ending record") and await _until(lambda: _value(kills), "the kill")
        await second.stop()
        await nc.flush()
        assert approved == [] and (await summary())["status"] == "waiting"

        # 3. Restarted: the completion event goes out once, the index says completed, the timer is gone.
        third = ReactiveRuntime(nc, registry)
        await third.start()
        await _until(lambda: _value(approved), "the completion event")
        assert (await summary())["status"] == "completed" and await status() == "completed"
        try:
            await js.get_last_msg("REACTIVE", f"reactive.schedule.{EXEC}")
            raise AssertionError("the timeout is still armed")
        except NotFoundError:
            pass
        await third.stop()
        assert len(reviews) == 1 and len(approved) == 1 and approved[0]["final_phase"] == "approved"
        await nc.close()

    run(body(), timeout=60)


def _collect(into: list):
    async def cb(msg) -> None:
        into.append(json.loads(msg.data))

    return cb


async def _value(value):
    return value


def test_messages_and_callbacks_the_rules_cannot_read_are_dropped_not_redelivered_forever(nats_url, run):
    async def body():
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        registry = await s.plan_review_setup(js)
        runtime = ReactiveRuntime(nc, registry)
        await runtime.start()
        try:
            await js.publish("plans.requests", b'{"plan": "no request id"}')  # not a ReviewRequest
            await js.publish("plans.requests", b"not json")
            await js.publish("plans.requests", json.dumps({"request_id": "ok1", "plan": "p"}).encode())

            async def handled():
                info = await js.consumer_info("PLAN_REQUESTS", "reactive-plan-review-submit")
                return info.num_pending == 0 and info.num_ack_pending == 0 and info.delivered.stream_seq >= 3

            await _until(handled, "all three messages taken")
            ok1 = execution_id("plan-review", "plan.ok1")
            ex, _, _ = await load_execution(js, ok1)
            assert ex.status == "waiting"
            # Callbacks it cannot read are dropped too; the execution waits on for one it can.
            task = ex.pending.task_id
            await js.publish(f"reactive.inbox.{ok1}", json.dumps({"task_id": task, "approved": "maybe"}).encode())
            await js.publish(f"reactive.inbox.{ok1}", b"not json")
            await js.publish(f"reactive.inbox.{ok1}", json.dumps({"task_id": task, "approved": True}).encode())

            async def completed():
                ex, _, _ = await load_execution(js, ok1)
                return ex.status == "completed"

            await _until(completed, "the readable approval")

            async def inbox_settled():
                info = await js.consumer_info("REACTIVE", "reactive-inbox")
                return info.num_pending == 0 and info.num_ack_pending == 0

            await _until(inbox_settled, "every callback acknowledged")
        finally:
            await runtime.stop()
            await nc.close()

    run(body(), timeout=60)
