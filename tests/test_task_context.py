"""What a handler sees (ctx fields) and reports besides a value: Continue and added steps.

A real Worker on a real nats-server; each test plays the engine by hand
(worker_support): tasks published as the engine would, facts read from the
run's inbox.
"""

from __future__ import annotations

import asyncio

from dagnats.domain.definition import StepDef
from dagnats.domain.errors import InvalidIdentifier
from dagnats.infra.added_steps import InvalidAddedStep
from dagnats.infra.worker import Continue, TaskContext, Worker

from worker_support import Inbox, drained, engine_js, eventually, publish_task, running


def play(nats_url, run, worker: Worker, tasks: list[tuple[str, dict]], until: str = "step.completed"):
    """Publish ``tasks`` (task name, publish_task kwargs) for run r1 and return every fact
    up to the ``until`` fact of the last one; the worker has acked them all by then."""

    async def body():
        nc, js = await engine_js(nats_url)
        async with running(worker):
            inbox = await Inbox.open(js, "r1")
            facts = []
            for task, fields in tasks:
                last = fields.pop("until", until)
                await publish_task(js, task, "r1", **fields)
                facts += await inbox.until(last)
            await eventually(lambda: drained(js))
        await nc.close()
        return facts

    return run(body())


def results(facts):
    return [f for f in facts if f.type != "step.started"]


# -- the context's fields -------------------------------------------------------------------


def test_ctx_carries_iteration_instance_metadata_and_step_type_and_facts_echo_the_instance(nats_url, run):
    w = Worker(nats_url)
    seen: list[TaskContext] = []

    @w.task("look")
    def look(ctx: TaskContext):
        seen.append(ctx)
        return ctx.instance

    meta = {"role": "reviewer", "model": "small"}
    facts = play(
        nats_url,
        run,
        w,
        [
            ("look", {"data": 1}),
            ("look", {"step_id": "m", "instance": 3, "iteration": 2, "metadata": meta, "step_type": "map"}),
        ],
    )
    plain, mapped = seen
    assert (plain.iteration, plain.instance, plain.metadata, plain.step_type) == (0, None, {}, "")
    assert (mapped.iteration, mapped.instance, mapped.metadata, mapped.step_type) == (2, 3, meta, "map")
    first, second = results(facts)
    assert (first.instance, first.id) == (None, "s1.1.step.completed")
    assert (second.instance, second.id, second.payload) == (3, "m.i3.1.step.completed", 3)


# -- Continue ---------------------------------------------------------------------------------


def test_continue_reports_step_continue_with_the_next_input_from_sync_and_async_handlers(nats_url, run):
    w = Worker(nats_url)

    @w.task("think")
    def think(ctx: TaskContext, n: int) -> Continue | int:
        return Continue({"n": n + 1}) if n < 5 else n

    @w.task("think-async")
    async def think_async(ctx: TaskContext, n: int) -> Continue:
        await asyncio.sleep(0)
        return Continue([n, ctx.iteration])

    loop = {"step_type": "agent_loop"}
    facts = play(
        nats_url,
        run,
        w,
        [
            ("think", {"data": 1, **loop, "until": "step.continue"}),
            (
                "think-async",
                {"data": 7, "step_id": "s2", "attempt": 3, "iteration": 2, **loop, "until": "step.continue"},
            ),
            ("think", {"data": 5, "attempt": 2, "iteration": 1, **loop}),
        ],
    )
    sync_continue, async_continue, done = results(facts)
    assert (sync_continue.type, sync_continue.payload, sync_continue.id) == (
        "step.continue",
        {"n": 2},
        "s1.1.step.continue",
    )
    assert (async_continue.type, async_continue.payload, async_continue.attempt) == ("step.continue", [7, 2], 3)
    assert (done.type, done.payload, done.attempt) == ("step.completed", 5, 2)


def test_continue_with_data_that_does_not_encode_or_outside_an_agent_loop_fails_permanently(nats_url, run):
    w = Worker(nats_url)

    @w.task("loop")
    def loop(ctx: TaskContext):
        return Continue(object()) if ctx.step_type == "agent_loop" else Continue("again")

    facts = play(
        nats_url,
        run,
        w,
        [
            ("loop", {"step_type": "agent_loop", "until": "step.failed"}),
            ("loop", {"step_id": "n", "step_type": "normal", "until": "step.failed"}),
        ],
    )
    unencodable, misplaced = results(facts)
    assert unencodable.failure.failure_type == "permanent"
    assert unencodable.failure.error.startswith("Continue data does not encode as JSON")
    assert misplaced.failure.failure_type == "permanent"
    assert misplaced.failure.error == "Continue is for agent_loop steps; step n is a normal step"


# -- added steps ------------------------------------------------------------------------------


def test_added_steps_are_reported_once_before_the_result_and_depend_on_the_adding_step(nats_url, run):
    w = Worker(nats_url)
    returned: list[str] = []

    @w.task("plan")
    def plan(ctx: TaskContext) -> str:
        returned.append(ctx.add_step("fetch", "fetcher", input={"url": "u", "prev": {"$ref": "s1.out"}}))
        returned.append(ctx.add_step("sum", "summer", after=["fetch"]))
        return "planned"

    @w.task("plan-async")
    async def plan_async(ctx: TaskContext) -> Continue:
        ctx.add_step("more", "summer", after="s1")
        return Continue(None)

    facts = play(
        nats_url,
        run,
        w,
        [("plan", {}), ("plan-async", {"step_id": "loop", "step_type": "agent_loop", "until": "step.continue"})],
    )
    added, completed, added_async, continued = results(facts)
    assert returned == ["fetch", "sum"]
    assert (added.type, added.id, added.attempt) == ("steps.added", "s1.1.steps.added", 1)
    assert added.payload.steps == (
        StepDef(id="fetch", task="fetcher", depends_on=("s1",), input={"url": "u", "prev": {"$ref": "s1.out"}}),
        StepDef(id="sum", task="summer", depends_on=("s1", "fetch")),
    )
    assert (completed.type, completed.payload) == ("step.completed", "planned")
    assert added_async.type == "steps.added"
    assert added_async.payload.steps == (StepDef(id="more", task="summer", depends_on=("loop", "s1")),)
    assert continued.type == "step.continue"


def test_a_failed_attempt_adds_no_steps(nats_url, run):
    w = Worker(nats_url)

    @w.task("plan")
    def plan(ctx: TaskContext):
        ctx.add_step("later", "t")
        raise RuntimeError("changed my mind")

    facts = play(nats_url, run, w, [("plan", {"until": "step.failed"})])
    assert [f.type for f in results(facts)] == ["step.failed"]


def test_add_step_refuses_bad_ids_tasks_duplicates_self_dependencies_and_unencodable_input(nats_url, run):
    w = Worker(nats_url)
    refused: dict[str, Exception | None] = {}

    @w.task("plan")
    def plan(ctx: TaskContext) -> str:
        attempts = {
            "bad id": lambda: ctx.add_step("a.b", "t"),
            "bad task": lambda: ctx.add_step("ok", "t*"),
            "bad after": lambda: ctx.add_step("ok", "t", after=["x>"]),
            "self": lambda: ctx.add_step("s1", "t"),
            "own after": lambda: ctx.add_step("c", "t", after=["c"]),
            "duplicate": lambda: ctx.add_step("kept", "t"),
            "input": lambda: ctx.add_step("d", "t", input={"when": object()}),
        }
        ctx.add_step("kept", "t")
        for name, attempt in attempts.items():
            try:
                attempt()
                refused[name] = None
            except Exception as err:  # noqa: BLE001 - each is asserted on below
                refused[name] = err
        return "ok"

    facts = play(nats_url, run, w, [("plan", {})])
    for name in ("bad id", "bad task", "bad after"):
        assert isinstance(refused[name], InvalidIdentifier), name
    for name in ("self", "own after", "duplicate", "input"):
        assert isinstance(refused[name], InvalidAddedStep), name
    assert str(refused["duplicate"]) == "cannot add step 'kept': this attempt already added a step with that id"
    assert "does not encode as JSON" in str(refused["input"])
    added, completed = results(facts)
    assert [s.id for s in added.payload.steps] == ["kept"]
    assert completed.payload == "ok"
