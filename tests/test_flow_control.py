"""Flow control through the engine on a real nats-server, workers driven by hand."""

from __future__ import annotations

import asyncio

import pytest

from dagnats.domain.errors import InvalidInput, InvalidRunState, SingletonConflict

from harness import EngineHarness, FakeWorker


def _wf(name: str, steps: list[dict], **extra) -> dict:
    return {"name": name, "steps": steps, **extra}


def test_skip_if_skips_the_step_and_its_dependents_still_run(nats_url, run):
    wf = _wf(
        "skipper",
        [
            {"id": "check", "task": "check"},
            {
                "id": "notify",
                "task": "notify",
                "depends_on": ["check"],
                "skip_if": {"step_id": "check", "field": "score", "op": ">=", "value": 50},
            },
            {"id": "done", "task": "done", "depends_on": ["notify"]},
        ],
    )

    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(wf)
            run_id = await h.client.start("skipper")
            await FakeWorker(h.nc, "check").complete({"score": 90})
            done = await FakeWorker(h.nc, "done").complete("ok")
            return done, await h.wait_status(run_id, "completed")

    done, final = run(body())
    assert final["steps"]["notify"]["status"] == "skipped"
    assert done.input is None  # a skipped dependency passes no output on


def test_skip_if_with_a_missing_field_does_not_skip(nats_url, run):
    wf = _wf(
        "noskip",
        [
            {"id": "a", "task": "na"},
            {
                "id": "b",
                "task": "nb",
                "depends_on": ["a"],
                "skip_if": {"step_id": "a", "field": "x", "op": "==", "value": 1},
            },
        ],
    )

    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(wf)
            run_id = await h.client.start("noskip")
            await FakeWorker(h.nc, "na").complete({"y": 1})
            await FakeWorker(h.nc, "nb").complete("ran")
            return await h.wait_status(run_id, "completed")

    assert run(body())["steps"]["b"]["status"] == "completed"


def test_on_failure_runs_the_handler_and_recovers_the_step(nats_url, run):
    wf = _wf(
        "recover",
        [
            {"id": "charge", "task": "charge", "on_failure": "report"},
            {"id": "ship", "task": "ship", "depends_on": ["charge"]},
            {"id": "report", "task": "report"},
        ],
    )

    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(wf)
            run_id = await h.client.start("recover", {"amount": 5})
            await FakeWorker(h.nc, "charge").fail("card declined", failure_type="permanent")
            handler = await FakeWorker(h.nc, "report").complete("reported")
            return handler, await h.wait_status(run_id, "completed")

    handler, final = run(body())
    assert handler.input == {"failed_step": "charge", "error": "card declined", "attempts": 1, "input": {"amount": 5}}
    assert final["steps"]["charge"]["status"] == "recovered"
    assert final["steps"]["ship"]["status"] == "skipped"


def test_a_failure_compensates_completed_steps_in_reverse_order(nats_url, run):
    wf = _wf(
        "saga",
        [
            {"id": "book_flight", "task": "book_flight", "compensate": "cancel_flight"},
            {"id": "book_hotel", "task": "book_hotel", "depends_on": ["book_flight"], "compensate": "cancel_hotel"},
            {"id": "charge", "task": "charge_card", "depends_on": ["book_hotel"]},
            {"id": "cancel_flight", "task": "cancel_flight"},
            {"id": "cancel_hotel", "task": "cancel_hotel"},
        ],
    )

    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(wf)
            run_id = await h.client.start("saga")
            await FakeWorker(h.nc, "book_flight").complete("F1")
            await FakeWorker(h.nc, "book_hotel").complete("H1")
            await FakeWorker(h.nc, "charge_card").fail("insufficient funds", failure_type="permanent")
            first = await FakeWorker(h.nc, "cancel_hotel").complete("hotel cancelled")
            second = await FakeWorker(h.nc, "cancel_flight").complete("flight cancelled")
            return first, second, await h.wait_status(run_id, "compensated")

    first, second, final = run(body())
    assert first.input == {
        "original_step": "book_hotel",
        "original_output": "H1",
        "trigger_step": "charge",
        "trigger_error": "insufficient funds",
    }
    assert second.input["original_step"] == "book_flight"
    assert final["status"] == "compensated"


def test_a_failing_compensation_ends_compensate_failed(nats_url, run):
    wf = _wf(
        "saga2",
        [
            {"id": "a", "task": "sa", "compensate": "undo_a"},
            {"id": "b", "task": "sb", "depends_on": ["a"]},
            {"id": "undo_a", "task": "undo_a"},
        ],
    )

    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(wf)
            run_id = await h.client.start("saga2")
            await FakeWorker(h.nc, "sa").complete(1)
            await FakeWorker(h.nc, "sb").fail("boom", failure_type="permanent")
            await FakeWorker(h.nc, "undo_a").fail("cannot undo", failure_type="permanent")
            return await h.wait_status(run_id, "compensate_failed")

    assert "cannot undo" in run(body())["error"]


def test_an_optional_failure_skips_dependents_and_the_run_completes(nats_url, run):
    wf = _wf(
        "opt",
        [
            {"id": "extra", "task": "extra", "optional": True},
            {"id": "uses_extra", "task": "uses", "depends_on": ["extra"]},
            {
                "id": "defaults",
                "task": "defaults",
                "depends_on": ["extra"],
                "input": {"value": {"$ref": "extra.value", "default": 0}},
            },
            {"id": "cleanup", "task": "cleanup", "after_any": ["extra"]},
        ],
    )

    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(wf)
            run_id = await h.client.start("opt")
            await FakeWorker(h.nc, "extra").fail("nope", failure_type="permanent")
            defaults = await FakeWorker(h.nc, "defaults").complete("d")
            await FakeWorker(h.nc, "cleanup").complete("c")
            return defaults, await h.wait_status(run_id, "completed")

    defaults, final = run(body())
    assert defaults.input == {"value": 0}
    assert final["steps"]["uses_extra"]["status"] == "skipped"
    assert final["steps"]["extra"]["status"] == "failed"


def test_input_templates_pick_parts_of_upstream_outputs(nats_url, run):
    wf = _wf(
        "wired",
        [
            {"id": "user", "task": "user"},
            {
                "id": "mail",
                "task": "mail",
                "depends_on": ["user"],
                "input": {"to": {"$ref": "user.email"}, "subject": "hi", "all": {"$ref": "user"}},
            },
        ],
    )

    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(wf)
            run_id = await h.client.start("wired")
            await FakeWorker(h.nc, "user").complete({"email": "a@b.c", "name": "A"})
            mail = await FakeWorker(h.nc, "mail").complete("sent")
            await h.wait_status(run_id, "completed")
            return mail

    assert run(body()).input == {"to": "a@b.c", "subject": "hi", "all": {"email": "a@b.c", "name": "A"}}


def test_schemas_refuse_bad_input_and_fail_bad_output(nats_url, run):
    wf = _wf(
        "typed",
        [{"id": "a", "task": "ty"}],
        input_schema={"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}},
        output_schema={"type": "string"},
    )

    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(wf)
            with pytest.raises(InvalidInput, match="'n' is a required property"):
                await h.client.start("typed", {"m": 1})
            listed = await h.client.runs(workflow="typed")
            run_id = await h.client.start("typed", {"n": 1})
            await FakeWorker(h.nc, "ty").complete(42)
            return listed, await h.wait_status(run_id, "failed")

    listed, final = run(body())
    assert listed == []
    assert "output does not match output_schema" in final["error"]


def test_a_run_past_its_deadline_is_cancelled(nats_url, run):
    wf = _wf("deadline", [{"id": "a", "task": "dl"}], timeout="1s")

    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(wf)
            run_id = await h.client.start("deadline")
            worker = FakeWorker(h.nc, "dl")
            task, msg = await worker.next()
            final = await h.wait_status(run_id, "cancelled", timeout=10)
            await worker.report(task, "step.completed", "too late")
            await msg.ack()
            await asyncio.sleep(0.3)
            return final, await h.client.status(run_id)

    final, later = run(body())
    assert final["error"] == "deadline exceeded"
    assert later["steps"]["a"]["status"] == "cancelled"


def test_pause_lets_in_flight_steps_finish_and_resume_continues(nats_url, run):
    wf = _wf("pausable", [{"id": "a", "task": "pa"}, {"id": "b", "task": "pb", "depends_on": ["a"]}])

    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(wf)
            run_id = await h.client.start("pausable")
            worker = FakeWorker(h.nc, "pa")
            task, msg = await worker.next()
            await h.wait_step(run_id, "a", "queued")
            await h.client.pause(run_id)
            pausing = await h.wait_status(run_id, "pausing")
            await worker.report(task, "step.started")
            await worker.report(task, "step.completed", "a-out")
            await msg.ack()
            paused = await h.wait_status(run_id, "paused")
            with pytest.raises(InvalidRunState):
                await h.client.pause(run_id)
            await h.client.resume(run_id)
            await FakeWorker(h.nc, "pb").complete("b-out")
            return pausing, paused, await h.wait_status(run_id, "completed")

    pausing, paused, final = run(body())
    assert paused["steps"]["b"]["status"] == "pending"
    assert final["output"] == "b-out"


def test_an_idempotency_key_returns_the_existing_run(nats_url, run):
    wf = _wf("idem", [{"id": "a", "task": "id1"}], idempotency_key="order.id")

    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(wf)
            first = await h.client.start("idem", {"order": {"id": 7}})
            again = await h.client.start("idem", {"order": {"id": 7}})
            other = await h.client.start("idem", {"order": {"id": 8}})
        async with EngineHarness(nats_url) as h2:  # a restarted engine still knows the key
            after_restart = await h2.client.start("idem", {"order": {"id": 7}})
        return first, again, other, after_restart

    first, again, other, after_restart = run(body())
    assert first == again == after_restart
    assert other != first


def test_singleton_skip_refuses_and_cancel_replaces_the_active_run(nats_url, run):
    skip = _wf("single_skip", [{"id": "a", "task": "ss"}], singleton={"mode": "skip", "key": "account"})
    cancel = _wf("single_cancel", [{"id": "a", "task": "sc"}], singleton={"mode": "cancel"})

    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(skip)
            await h.client.register(cancel)
            first = await h.client.start("single_skip", {"account": "x"})
            with pytest.raises(SingletonConflict, match=first):
                await h.client.start("single_skip", {"account": "x"})
            other_key = await h.client.start("single_skip", {"account": "y"})
            old = await h.client.start("single_cancel")
            await h.wait_status(old, "running")
            new = await h.client.start("single_cancel")
            old_final = await h.wait_status(old, "cancelled")
            return other_key, old_final, new, await h.client.status(new)

    other_key, old_final, new, new_state = run(body())
    assert other_key
    assert f"replaced by run {new}" in old_final["error"]
    assert new_state["status"] == "running"


def test_cancel_on_a_matching_event_cancels_the_run(nats_url, run):
    wf = _wf(
        "cancellable",
        [{"id": "a", "task": "co"}],
        cancel_on=[{"event": "order_cancelled", "match": {"left": "order_id", "op": "eq", "right": "input.order_id"}}],
    )

    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(wf)
            run_id = await h.client.start("cancellable", {"order_id": "o-1"})
            await h.wait_status(run_id, "running")
            await h.client.publish_event("order_cancelled", {"order_id": "o-2"})
            await asyncio.sleep(0.5)
            untouched = await h.client.status(run_id)
            await h.client.publish_event("order_cancelled", {"order_id": "o-1"})
            return untouched, await h.wait_status(run_id, "cancelled")

    untouched, final = run(body())
    assert untouched["status"] == "running"
    assert final["error"] == "cancelled by event order_cancelled"


def test_delete_refuses_a_live_run_and_removes_a_finished_one(nats_url, run):
    from dagnats.domain.errors import RunNotFound

    wf = _wf("deletable", [{"id": "a", "task": "de"}])

    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(wf)
            run_id = await h.client.start("deletable")
            await h.wait_status(run_id, "running")
            with pytest.raises(InvalidRunState, match="cannot delete"):
                await h.client.delete(run_id)
            await FakeWorker(h.nc, "de").complete(1)
            await h.wait_status(run_id, "completed")
            await h.client.delete(run_id)
            with pytest.raises(RunNotFound):
                await h.client.status(run_id)
            return await h.client.runs(workflow="deletable")

    assert run(body()) == []


def test_wait_returns_when_the_step_finishes(nats_url, run):
    wf = _wf("waitable", [{"id": "a", "task": "wa"}, {"id": "b", "task": "wb", "depends_on": ["a"]}])

    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(wf)
            run_id = await h.client.start("waitable")
            waiter = asyncio.create_task(h.client.wait(run_id, step="a", timeout=10))
            await FakeWorker(h.nc, "wa").complete("A!")
            step_view = await waiter
            waiter = asyncio.create_task(h.client.wait(run_id, timeout=10))
            await FakeWorker(h.nc, "wb").complete("B!")
            return step_view, await waiter

    step_view, run_view = run(body())
    assert step_view["steps"]["a"]["output"] == "A!"
    assert run_view["output"] == "B!"


def test_inspect_shows_timings_and_blockers(nats_url, run):
    wf = _wf("inspectable", [{"id": "a", "task": "ia"}, {"id": "b", "task": "ib", "depends_on": ["a"]}])

    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(wf)
            run_id = await h.client.start("inspectable")
            worker = FakeWorker(h.nc, "ia")
            task, msg = await worker.next()
            await worker.report(task, "step.started")
            await h.wait_step(run_id, "a", "running")
            blocked = await h.client.inspect(run_id)
            await worker.report(task, "step.completed", 1)
            await msg.ack()
            await FakeWorker(h.nc, "ib").complete(2)
            await h.wait_status(run_id, "completed")
            return blocked, await h.client.inspect(run_id)

    blocked, done = run(body())
    assert blocked["blockers"] == {"b": ["a"]}
    assert done["blockers"] == {}
    assert done["steps"]["a"]["queue_seconds"] >= 0 and done["steps"]["a"]["exec_seconds"] >= 0


def test_an_explicit_idempotency_key_deduplicates_any_workflow(nats_url, run):
    wf = _wf("idem_explicit", [{"id": "a", "task": "ie"}])

    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(wf)
            first = await h.client.start("idem_explicit", 1, idempotency_key="job-42")
            again = await h.client.start("idem_explicit", 2, idempotency_key="job-42")
            plain = await h.client.start("idem_explicit", 1)
            return first, again, plain

    first, again, plain = run(body())
    assert first == again != plain


def test_a_step_type_the_engine_does_not_run_is_refused_at_start_and_fails_a_run_clearly(nats_url, run, monkeypatch):
    import msgspec

    from dagnats.domain import events as ev
    from dagnats.domain.decision import STARTERS
    from dagnats.domain.definition import EXECUTED_STEP_TYPES
    from dagnats.domain.errors import UnsupportedStepType
    from dagnats.infra.engine import starts
    from dagnats.infra.wire.subjects import inbox_subject

    # Every step type runs today: play an engine that does not run respond (an older one).
    monkeypatch.delitem(STARTERS, "respond")
    monkeypatch.setattr(starts, "EXECUTED_STEP_TYPES", EXECUTED_STEP_TYPES - {"respond"})
    wf = _wf("sleepy", [{"id": "a", "task": "sl1"}, {"id": "nap", "type": "respond", "depends_on": ["a"]}])

    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(wf)
            with pytest.raises(UnsupportedStepType, match="step type respond is not executed"):
                await h.client.start("sleepy")
            # A start that bypasses the API (an older engine's run, say) fails instead of hanging.
            stored = await h.client.workflow("sleepy")
            start = ev.make_event(
                type=ev.WORKFLOW_STARTED,
                run_id="handmade",
                id="workflow.started",
                timestamp="2026-01-01T00:00:00.000000Z",
                payload={"workflow_def": stored, "input": None},
            )
            await h.nc.jetstream().publish(inbox_subject("handmade"), msgspec.json.encode(start))
            await FakeWorker(h.nc, "sl1").complete("a")
            return await h.wait_status("handmade", "failed")

    final = run(body())
    assert "step type respond is not executed by this engine yet" in final["error"]
