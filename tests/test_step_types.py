"""Every step type the engine runs, on a real nats-server: sleeps, approvals, child runs,
maps and planners, each through an engine restart too."""

from __future__ import annotations

import pytest

from dagnats.domain.errors import ApprovalAlreadyDecided, NotWaitingForApproval, StepNotFound, WorkflowInvalid

from harness import EngineHarness, FakeWorker


def step(step_id: str, step_type: str = "normal", *deps: str, **fields):
    if step_type in ("normal", "map", "planner", "agent_loop", "agent") and "task" not in fields:
        fields["task"] = step_id
    return {"id": step_id, "type": step_type, "depends_on": list(deps), **fields}


def test_a_sleep_holds_the_next_step_until_it_wakes(nats_url, run):
    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(
                {
                    "name": "napper",
                    "steps": [step("nap", "sleep", config={"duration": "1500ms"}), step("after", "normal", "nap")],
                }
            )
            run_id = await h.client.start("napper")
            sleeping = await h.wait_step(run_id, "nap", "running")
            inspected = await h.client.inspect(run_id)
            task = await FakeWorker(h.nc, "after").complete("up", timeout=10)
            final = await h.client.wait(run_id, timeout=10)
            return sleeping, inspected, task, final

    sleeping, inspected, task, final = run(body())
    assert sleeping["steps"]["nap"]["waiting"]["kind"] == "sleep"
    assert [t["kind"] for t in inspected["timers"]] == ["sleep"]
    assert task.input is None and final["status"] == "completed"


APPROVAL = {
    "name": "needs-ok",
    "steps": [
        step("ok", "approval", config={"subject": "approvals.needs-ok", "timeout": "1h", "description": "ship it?"}),
        step("ship", "normal", "ok"),
    ],
}


def test_an_approval_sends_its_request_and_completes_on_approve_and_a_second_decision_is_refused(nats_url, run):
    async def body():
        async with EngineHarness(nats_url) as h:
            requests = await h.nc.subscribe("approvals.needs-ok")
            await h.client.register(APPROVAL)
            run_id = await h.client.start("needs-ok", {"version": 3})
            request = await requests.next_msg(timeout=10)
            waiting = await h.wait_step(run_id, "ok", "running")
            with pytest.raises(NotWaitingForApproval):
                await h.client.approve(run_id, "ship")
            with pytest.raises(StepNotFound):
                await h.client.approve(run_id, "ghost")
            answer = await h.client.approve(run_id, "ok", "looks good", by="ann")
            with pytest.raises((ApprovalAlreadyDecided, NotWaitingForApproval)):
                await h.client.reject(run_id, "ok", "too late")
            task = await FakeWorker(h.nc, "ship").complete("shipped")
            return request, waiting, answer, task, await h.client.wait(run_id, timeout=10)

    request, waiting, answer, task, final = run(body())
    import json

    sent = json.loads(request.data)
    assert sent["description"] == "ship it?" and sent["input"] == {"version": 3} and len(sent["token"]) == 64
    assert waiting["steps"]["ok"]["waiting"]["subject"] == "approvals.needs-ok"
    assert answer == {"run_id": final["run_id"], "step_id": "ok", "approved": True}
    assert task.input == {"approved": True, "comment": "looks good", "by": "ann"}
    assert final["status"] == "completed"


def test_a_rejected_approval_fails_the_run_and_a_token_must_match(nats_url, run):
    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(APPROVAL)
            run_id = await h.client.start("needs-ok")
            await h.wait_step(run_id, "ok", "running")
            from dagnats.domain.errors import InvalidApprovalToken

            with pytest.raises(InvalidApprovalToken):
                await h.client.approve(run_id, "ok", token="0" * 64)
            await h.client.reject(run_id, "ok", "not today")
            return await h.client.wait(run_id, timeout=10)

    final = run(body())
    assert final["status"] == "failed" and final["steps"]["ok"]["error"] == "rejected: not today"


CHILD = {"name": "child-wf", "steps": [step("c1"), step("c2", "normal", "c1")]}


def test_a_child_run_completes_its_parent_step_and_is_linked_to_it(nats_url, run):
    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(CHILD)
            await h.client.register(
                {
                    "name": "parent-wf",
                    "steps": [
                        step("sub", "sub_workflow", config={"workflow": "child-wf"}),
                        step("end", "normal", "sub"),
                    ],
                }
            )
            run_id = await h.client.start("parent-wf", {"n": 1})
            parent = await h.wait_step(run_id, "sub", "running")
            child_id = parent["steps"]["sub"]["waiting"]["child_run_id"]
            child_task = await FakeWorker(h.nc, "c1").complete("one")
            await FakeWorker(h.nc, "c2").complete({"child": "done"})
            end_task = await FakeWorker(h.nc, "end").complete("fin")
            return (
                child_id,
                child_task,
                end_task,
                await h.client.wait(run_id, timeout=10),
                await h.client.status(child_id),
            )

    child_id, child_task, end_task, final, child = run(body())
    assert child_task.run_id == child_id and child_task.input == {"n": 1}
    assert (child["parent_run_id"], child["parent_step_id"], child["root_run_id"]) == (
        final["run_id"],
        "sub",
        final["run_id"],
    )
    assert end_task.input == {"child": "done"} and final["status"] == "completed"


def test_two_parents_get_a_child_each_even_when_the_child_workflow_has_an_idempotency_key(nats_url, run):
    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(
                {"name": "keyed-child", "idempotency_key": "order", "steps": [step("k1", "normal")]}
            )
            await h.client.register(
                {"name": "keyed-parent", "steps": [step("sub", "sub_workflow", config={"workflow": "keyed-child"})]}
            )
            parents = [await h.client.start("keyed-parent", {"order": "o-1"}) for _ in range(2)]
            worker = FakeWorker(h.nc, "k1")
            children = {(await worker.complete(n)).run_id for n in range(2)}
            return children, [await h.client.wait(p, timeout=10) for p in parents]

    children, finals = run(body())
    assert len(children) == 2
    assert [f["status"] for f in finals] == ["completed", "completed"]
    assert sorted(f["output"] for f in finals) == [0, 1]


def test_a_failed_child_fails_its_parent_and_a_cancelled_parent_cancels_its_child(nats_url, run):
    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(CHILD)
            await h.client.register(
                {"name": "parent-wf", "steps": [step("sub", "sub_workflow", config={"workflow": "child-wf"})]}
            )
            failing = await h.client.start("parent-wf")
            await FakeWorker(h.nc, "c1").fail("child broke", failure_type="permanent")
            failed = await h.client.wait(failing, timeout=10)
            cancelled = await h.client.start("parent-wf")
            child_id = (await h.wait_step(cancelled, "sub", "running"))["steps"]["sub"]["waiting"]["child_run_id"]
            await h.wait_step(child_id, "c1", "queued")
            await h.client.cancel(cancelled)
            return failed, await h.client.wait(child_id, timeout=10)

    failed, child = run(body())
    assert failed["status"] == "failed" and "child run" in failed["steps"]["sub"]["error"]
    assert "child broke" in failed["steps"]["sub"]["error"]
    assert child["status"] == "cancelled" and "its parent run" in child["error"]


def test_a_sub_workflow_naming_an_unknown_workflow_is_refused_at_registration(nats_url, run):
    async def body():
        async with EngineHarness(nats_url) as h:
            with pytest.raises(WorkflowInvalid) as caught:
                await h.client.register(
                    {"name": "orphan", "steps": [step("sub", "sub_workflow", config={"workflow": "nowhere"})]}
                )
            return caught.value, await h.client.workflows()

    error, registered = run(body())
    assert "no workflow 'nowhere' is registered" in str(error) and registered == []


def test_a_map_runs_every_element_and_gives_their_outputs_in_order(nats_url, run):
    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(
                {
                    "name": "mapper",
                    "steps": [
                        step("list"),
                        step("each", "map", "list", config={"concurrency": 3}),
                        step("sum", "normal", "each"),
                    ],
                }
            )
            run_id = await h.client.start("mapper")
            await FakeWorker(h.nc, "list").complete(list(range(10)))
            worker = FakeWorker(h.nc, "each")
            seen = []
            for _ in range(10):
                task, msg = await worker.next()
                seen.append(task.instance)
                await worker.report(task, "step.completed", task.input * 10)
                await msg.ack()
            status = await h.client.status(run_id)
            sum_task = await FakeWorker(h.nc, "sum").complete("ok")
            return seen, status, sum_task, await h.client.wait(run_id, timeout=10)

    seen, status, sum_task, final = run(body())
    assert sorted(seen) == list(range(10))
    assert sum_task.input == [n * 10 for n in range(10)]
    assert final["status"] == "completed"


def test_a_planner_runs_its_plan_before_its_dependents(nats_url, run):
    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(
                {
                    "name": "planned",
                    "steps": [
                        step("plan", "planner", config={"max_steps": 3, "allowed_tasks": ["work"]}),
                        step("after", "normal", "plan"),
                    ],
                }
            )
            run_id = await h.client.start("planned")
            await FakeWorker(h.nc, "plan").complete(
                {
                    "steps": [
                        {"id": "one", "task": "work", "input": 1},
                        {"id": "two", "task": "work", "depends_on": ["one"]},
                    ]
                }
            )
            first = await FakeWorker(h.nc, "work").complete("first")
            second = await FakeWorker(h.nc, "work").complete("second")
            after = await FakeWorker(h.nc, "after").complete("end")
            return first, second, after, await h.client.wait(run_id, timeout=10)

    first, second, after, final = run(body())
    assert (first.step_id, first.input) == ("plan-one", 1)
    assert (second.step_id, second.input) == ("plan-two", "first")
    assert after.input == {"plan-two": "second"}
    assert final["dynamic_steps"] == ["plan-one", "plan-two"] and final["status"] == "completed"


def test_engine_run_steps_carry_on_across_an_engine_restart(nats_url, run):
    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(CHILD)
            await h.client.register(APPROVAL)
            await h.client.register(
                {
                    "name": "mixed",
                    "steps": [
                        step("nap", "sleep", config={"duration": "2s"}),
                        step("sub", "sub_workflow", config={"workflow": "child-wf"}),
                    ],
                }
            )
            approval = await h.client.start("needs-ok")
            mixed = await h.client.start("mixed")
            await h.wait_step(approval, "ok", "running")
            await h.wait_step(mixed, "sub", "running")
        async with EngineHarness(nats_url) as h:  # the engine went away and came back
            await h.client.approve(approval, "ok")
            await FakeWorker(h.nc, "ship").complete("shipped")
            await FakeWorker(h.nc, "c1").complete("one")
            await FakeWorker(h.nc, "c2").complete("two")
            return await h.client.wait(approval, timeout=15), await h.client.wait(mixed, timeout=15)

    approval, mixed = run(body(), timeout=60)
    assert approval["status"] == mixed["status"] == "completed"
    assert mixed["steps"]["nap"]["status"] == "completed" and mixed["steps"]["sub"]["output"] == "two"


def test_a_child_start_asked_before_the_control_plane_is_up_waits_for_it(nats_url, run):
    # On a restart the engine rebuilds its unfinished runs before the control plane
    # (which starts children) is up: a parent's recovery must not crash on that.
    import asyncio

    import nats

    from dagnats.domain.actions import StartChildRun
    from dagnats.infra.engine.bridge import LoopBridge
    from dagnats.infra.engine.outbox import NatsOutbox

    async def body():
        nc = await nats.connect(nats_url)
        try:
            outbox = NatsOutbox(nc, LoopBridge(asyncio.get_running_loop()))
            asked = []

            async def starter(child, parent_run_id, trace_parent):
                asked.append((child.child_run_id, parent_run_id))

            action = StartChildRun("c" * 32, "child-wf", None, "sub", 1)
            sending = asyncio.create_task(outbox._send("p" * 32, [action], ""))
            await asyncio.sleep(0.2)
            waited = not sending.done()
            outbox.start_child = starter
            await asyncio.wait_for(sending, 5)
            return waited, asked
        finally:
            await nc.close()

    waited, asked = run(body())
    assert waited and asked == [("c" * 32, "p" * 32)]
