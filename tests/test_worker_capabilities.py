"""Workers with capabilities against a real nats-server: which subjects they consume.

Each test plays the engine: it puts definitions into ``workflow_defs`` and
publishes tasks on a capability set's subject (``task.<task>.<g>.<capset>.<run>``)
by hand, then reads which worker reported the result from ``inbox.<run>``.
"""

from __future__ import annotations

import msgspec
import pytest

from dagnats.domain.capabilities import capability_token
from dagnats.domain.definition import StepDef, WorkflowDef, encode_workflow
from dagnats.domain.errors import InvalidIdentifier
from dagnats.infra.wire.names import DEFS_BUCKET, TASK_STREAM, WORKERS_BUCKET
from dagnats.infra.wire.workers import WorkerRecord, live_workers
from dagnats.infra.worker import TaskContext, Worker

from worker_support import Inbox, engine_js, eventually, publish_task, queued, running

CUDA = ("cuda",)


def worker(url: str, worker_id: str, **options) -> Worker:
    """A worker of task ``render`` that answers with its own id."""
    w = Worker(url, worker_id=worker_id, **options)

    @w.task("render")
    def render(ctx: TaskContext, data) -> str:
        return ctx.worker_id

    return w


async def register(js, name: str, *steps: StepDef) -> None:
    """Store a definition as the engine does (validated there; here only what workers read)."""
    kv = await js.key_value(DEFS_BUCKET)
    await kv.put(name, encode_workflow(WorkflowDef(name=name, steps=steps)))


def render_step(step_id: str = "r", *caps: str, group: str = "") -> StepDef:
    return StepDef(id=step_id, task="render", worker_group=group, required_capabilities=caps)


async def consumers(js) -> dict[str, str]:
    """consumer name -> filter subject, of every consumer on TASK_QUEUES."""
    return {c.name: c.config.filter_subject async for c in _consumer_infos(js)}


async def _consumer_infos(js):
    for info in await js.consumers_info(TASK_STREAM):
        yield info


# -- construction --------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["a.b", "*", ">", "gpu 1", "", "x" * 65])
def test_a_capability_that_is_not_an_identifier_is_refused_at_construction(bad):
    with pytest.raises(InvalidIdentifier) as caught:
        Worker("nats://127.0.0.1:1", capabilities={"cuda", bad})
    assert str(caught.value).startswith(f"invalid capability {bad!r}: must match ^[A-Za-z0-9_-]{{1,64}}$")
    assert "\n" not in str(caught.value)


def test_capabilities_given_as_one_string_are_refused():
    with pytest.raises(TypeError, match="capabilities must be a set or list of names, not the string 'cuda'"):
        Worker("nats://127.0.0.1:1", capabilities="cuda")


def test_capabilities_are_kept_in_their_canonical_order():
    assert Worker("nats://127.0.0.1:1", capabilities=["fast", "cuda", "fast"]).capabilities == ("cuda", "fast")
    assert Worker("nats://127.0.0.1:1").capabilities == ()


# -- routing ---------------------------------------------------------------------------


def test_a_capability_step_goes_only_to_the_worker_offering_it(nats_url, run):
    capable, plain = worker(nats_url, "w-cuda", capabilities={"cuda"}), worker(nats_url, "w-plain")

    async def body():
        nc, js = await engine_js(nats_url)
        await register(js, "wf-cuda", render_step("r", "cuda"), render_step("p"))
        async with running(plain), running(capable):
            inboxes = {run_id: await Inbox.open(js, run_id) for run_id in ("gpu-1", "gpu-2", "gpu-3", "plain-1")}
            for run_id in ("gpu-1", "gpu-2", "gpu-3"):
                await publish_task(js, "render", run_id, step_id="r", capabilities=CUDA)
            await publish_task(js, "render", "plain-1", step_id="p")
            results = {run_id: (await inbox.result()).worker_id for run_id, inbox in inboxes.items()}
            found = await consumers(js)
        await nc.close()
        return results, found

    results, found = run(body())
    token = capability_token(CUDA)
    assert {results[r] for r in ("gpu-1", "gpu-2", "gpu-3")} == {"w-cuda"}
    assert results["plain-1"] in ("w-cuda", "w-plain")  # both serve the task's own subject
    assert found[f"workers-render@{token}"] == f"task.render.any.{token}.*"
    assert found["workers-render"] == "task.render.*"


def test_a_worker_without_the_capabilities_leaves_the_task_queued(nats_url, run):
    weak = worker(nats_url, "w-weak", capabilities={"fast"})

    async def body():
        nc, js = await engine_js(nats_url)
        await register(js, "wf-both", render_step("r", "cuda", "fast"))
        async with running(weak):
            inbox = await Inbox.open(js, "r1")
            await publish_task(js, "render", "r1", step_id="r", capabilities=("cuda", "fast"))
            await inbox.assert_empty(wait=1.5)
            left = await queued(js)
            found = await consumers(js)
        await nc.close()
        return left, found

    left, found = run(body())
    assert left == 1
    assert not [name for name in found if "@" in name]  # no consumer for a set it does not offer


def test_a_superset_of_the_capabilities_takes_the_step(nats_url, run):
    big = worker(nats_url, "w-big", capabilities={"cuda", "fast", "big-mem"})

    async def body():
        nc, js = await engine_js(nats_url)
        await register(js, "wf-sets", render_step("one", "cuda"), render_step("two", "fast", "cuda"))
        async with running(big):
            one, two = await Inbox.open(js, "r-one"), await Inbox.open(js, "r-two")
            await publish_task(js, "render", "r-one", step_id="one", capabilities=CUDA)
            await publish_task(js, "render", "r-two", step_id="two", capabilities=("cuda", "fast"))
            results = (await one.result()).worker_id, (await two.result()).worker_id
        await nc.close()
        return results

    assert run(body()) == ("w-big", "w-big")


def test_definitions_registered_after_the_worker_started_are_followed(nats_url, run):
    capable = worker(nats_url, "w-late-def", capabilities={"cuda"})

    async def body():
        nc, js = await engine_js(nats_url)
        async with running(capable):
            inbox = await Inbox.open(js, "r1")
            # Queued before any definition asked for the set: the work queue keeps it.
            await publish_task(js, "render", "r1", step_id="r", capabilities=CUDA)
            await inbox.assert_empty(wait=0.5)
            await register(js, "wf-later", render_step("r", "cuda"))
            result = await inbox.result()
        await nc.close()
        return result

    assert run(body()).worker_id == "w-late-def"


def test_a_worker_started_after_the_task_was_queued_takes_it(nats_url, run):
    capable = worker(nats_url, "w-late", capabilities={"cuda"})

    async def body():
        nc, js = await engine_js(nats_url)
        await register(js, "wf-early", render_step("r", "cuda"))
        inbox = await Inbox.open(js, "r1")
        await publish_task(js, "render", "r1", step_id="r", capabilities=CUDA)
        async with running(capable):
            result = await inbox.result()
            await eventually(lambda: _drained(js))
        await nc.close()
        return result

    assert run(body()).worker_id == "w-late"


def test_a_grouped_worker_takes_the_capability_steps_of_its_group_only(nats_url, run):
    grouped = worker(nats_url, "w-grouped", capabilities={"cuda"}, groups=["gpu"])

    async def body():
        nc, js = await engine_js(nats_url)
        await register(js, "wf-groups", render_step("g", "cuda", group="gpu"), render_step("n", "cuda"))
        async with running(grouped):
            in_group, no_group = await Inbox.open(js, "r-g"), await Inbox.open(js, "r-n")
            await publish_task(js, "render", "r-g", step_id="g", group="gpu", capabilities=CUDA)
            await publish_task(js, "render", "r-n", step_id="n", capabilities=CUDA)
            result = await in_group.result()
            await no_group.assert_empty(wait=1.0)
            found = await consumers(js)
        await nc.close()
        return result, found

    result, found = run(body())
    token = capability_token(CUDA)
    assert result.worker_id == "w-grouped"
    assert found[f"workers-render+gpu@{token}"] == f"task.render.g-gpu.{token}.*"
    assert f"workers-render@{token}" not in found


def test_the_heartbeat_record_carries_the_capabilities(nats_url, run):
    capable = worker(nats_url, "w-beat", capabilities={"fast", "cuda"})

    async def body():
        nc, js = await engine_js(nats_url)
        async with running(capable):

            async def listed():
                return any(r.worker_id == "w-beat" for r in await live_workers(js))

            await eventually(listed)
            records = {r.worker_id: r for r in await live_workers(js)}
        await nc.close()
        return records

    assert run(body())["w-beat"].capabilities == ["cuda", "fast"]


def test_a_record_from_before_capabilities_still_decodes(nats_url, run):
    old = b'{"worker_id":"w-old","tasks":["t"],"groups":[],"pid":1,"hostname":"h","last_seen":"x"}'

    async def body():
        nc, js = await engine_js(nats_url)
        await (await js.key_value(WORKERS_BUCKET)).put("w-old", old)
        records = await live_workers(js)
        await nc.close()
        return records

    assert run(body()) == [WorkerRecord("w-old", ["t"], [], 1, "h", "x")]
    assert msgspec.json.decode(old, type=WorkerRecord).capabilities == []


async def _drained(js) -> bool:
    return await queued(js) == 0
