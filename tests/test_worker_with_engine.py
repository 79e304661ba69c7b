"""The worker-side features with the real engine: an agent loop with checkpoints, a
signal sent through the control plane, steps a handler adds to its run."""

from __future__ import annotations

import asyncio

from dagnats.infra.worker import Continue, TaskContext, Worker

from harness import EngineHarness
from worker_support import running


def test_agent_loop_iterates_with_checkpoints_waits_for_a_signal_and_adds_a_step(nats_url, run):
    w = Worker(nats_url)

    @w.task("agent")
    async def agent(ctx: TaskContext, n: int):
        notes = await ctx.last_checkpoint() or []
        notes.append(ctx.iteration)
        await ctx.checkpoint(notes)
        if n < 2:
            return Continue(n + 1)
        verdict = await ctx.wait_for_signal("verdict", timeout=10)
        ctx.add_step("report", "reporter", input={"notes": notes, "verdict": verdict})
        return {"notes": notes, "role": ctx.metadata.get("role")}

    @w.task("reporter")
    def reporter(ctx: TaskContext, data):
        return data

    definition = {
        "name": "loop",
        "steps": [
            {
                "id": "think",
                "task": "agent",
                "type": "agent_loop",
                "metadata": {"role": "critic"},
                "config": {"max_iterations": 5},
            }
        ],
    }

    async def body():
        async with EngineHarness(nats_url) as h, running(w):
            await h.client.register(definition)
            run_id = await h.client.start("loop", 0)
            await until_recorded(h, run_id, "step.waiting")
            await h.client.signal(run_id, "verdict", "good")
            done = await h.wait_status(run_id, {"completed", "failed"})
            return done, [e["type"] for e in await h.client.events(run_id) if e.get("step_id") == "think"]

    done, think = run(body())
    assert done["status"] == "completed", done
    assert done["steps"]["think"]["output"] == {"notes": [0, 1, 2], "role": "critic"}
    assert done["steps"]["report"]["output"] == {"notes": [0, 1, 2], "verdict": "good"}
    worker_facts = [t for t in think if t in ("step.continue", "step.waiting", "steps.added", "step.completed")]
    assert worker_facts == ["step.continue", "step.continue", "step.waiting", "steps.added", "step.completed"]


async def until_recorded(h: EngineHarness, run_id: str, event_type: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not any(e["type"] == event_type for e in await h.client.events(run_id)):
        assert asyncio.get_running_loop().time() < deadline, f"no {event_type} recorded for run {run_id}"
        await asyncio.sleep(0.05)


def test_results_are_handed_to_the_runs_owner_and_stored_once(nats_url, run):
    """A worker hands each result to the owner of its run's partition (request/reply): the
    run's inbox stores only the start requests, and every run completes."""
    from dagnats.infra.wire.names import INBOX_STREAM

    w = Worker(nats_url)

    @w.task("hand")
    async def hand(ctx: TaskContext, data) -> str:
        return ctx.step_id

    chain = {
        "name": "handed",
        "steps": [
            {"id": "a", "task": "hand"},
            {"id": "b", "task": "hand", "depends_on": ["a"]},
            {"id": "c", "task": "hand", "depends_on": ["b"]},
        ],
    }

    async def body():
        async with EngineHarness(nats_url) as h, running(w):
            await h.client.register(chain)
            js = h.nc.jetstream()
            before = (await js.stream_info(INBOX_STREAM)).state.last_seq
            run_ids = await asyncio.gather(*(h.client.start("handed", n) for n in range(20)))
            finals = await asyncio.gather(*(h.client.wait(r, timeout=30) for r in run_ids))
            stored = (await js.stream_info(INBOX_STREAM)).state.last_seq - before
            return finals, stored

    finals, stored = run(body(), timeout=60)
    assert [f["status"] for f in finals] == ["completed"] * 20
    assert all(f["steps"]["c"]["output"] == "c" for f in finals)
    assert stored == 0  # the 20 start requests and the 60 results all went to the owner


def test_a_start_for_a_run_this_engine_owns_is_handed_over_in_process(nats_url, run):
    """The control plane and the owner of the run's partition are one process: the start
    goes to the run's actor without a request through the server (nothing on
    ``dagnats.handoff.*`` but the workers' results), and is stored once, in the history."""
    from dagnats.infra.wire.names import INBOX_STREAM

    w = Worker(nats_url)

    @w.task("hand")
    async def hand(ctx: TaskContext, data) -> str:
        return ctx.step_id

    async def body():
        async with EngineHarness(nats_url) as h, running(w):
            await h.client.register({"name": "one", "steps": [{"id": "a", "task": "hand"}]})
            js = h.nc.jetstream()
            handed: list[str] = []

            async def spy(msg) -> None:
                handed.append(msg.data.decode())

            sub = await h.nc.subscribe("dagnats.handoff.*", cb=spy)
            before = (await js.stream_info(INBOX_STREAM)).state.last_seq
            run_ids = await asyncio.gather(*(h.client.start("one", n) for n in range(10)))
            finals = await asyncio.gather(*(h.client.wait(r, timeout=30) for r in run_ids))
            await h.nc.flush()
            await sub.unsubscribe()
            stored = (await js.stream_info(INBOX_STREAM)).state.last_seq - before
            return finals, handed, stored

    finals, handed, stored = run(body(), timeout=60)
    assert [f["status"] for f in finals] == ["completed"] * 10
    assert stored == 0
    assert len(handed) == 10 and not any('"workflow.started"' in body for body in handed)  # results only
