"""Payloads near the server's 1 MiB max payload: no record over the limit, no run stuck,
every answer either fits or is paged, and cancel always ends a run."""

from __future__ import annotations

import asyncio

import msgspec

from dagnats.domain.events import decode_record
from dagnats.infra.wire.names import HISTORY_STREAM
from dagnats.infra.wire.reading import stored_messages
from dagnats.infra.wire.subjects import history_subject

from harness import EngineHarness, FakeWorker

KB = 1024


def blob(kb: int, tag: str = "x") -> str:
    return tag * (kb * KB)


async def record_sizes(h: EngineHarness, run_id: str) -> list[int]:
    js = h.nc.jetstream()
    return [len(m.data or b"") async for m in stored_messages(js, HISTORY_STREAM, history_subject(run_id))]


def test_a_600kb_output_passed_to_the_next_step_is_recorded_once(nats_url, run):
    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(
                {
                    "name": "big-chain",
                    "steps": [{"id": "a", "task": "big-a"}, {"id": "b", "task": "big-b", "depends_on": ["a"]}],
                }
            )
            run_id = await h.client.start("big-chain")
            await FakeWorker(h.nc, "big-a").complete(blob(600))
            b_task = await FakeWorker(h.nc, "big-b").complete("small")
            final = await h.client.wait(run_id, timeout=20)
            return b_task, final, await record_sizes(h, run_id), h.nc.max_payload

    b_task, final, sizes, limit = run(body())
    assert b_task.input == blob(600)  # the task carries the value; the history holds it once
    assert final["status"] == "completed" and final["output"] == "small"
    assert max(sizes) < limit and sum(sizes) < 700 * KB


def test_a_600kb_run_input_starts_and_reaches_the_first_step(nats_url, run):
    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register({"name": "big-input", "steps": [{"id": "a", "task": "bi-a"}]})
            run_id = await h.client.start("big-input", blob(600))
            task = await FakeWorker(h.nc, "bi-a").complete("ok")
            return task, await h.client.wait(run_id, timeout=20), await record_sizes(h, run_id), h.nc.max_payload

    task, final, sizes, limit = run(body())
    assert task.input == blob(600)
    assert final["status"] == "completed" and max(sizes) < limit


def test_three_parallel_450kb_outputs_fail_the_join_clearly_and_the_run_ends(nats_url, run):
    async def body():
        async with EngineHarness(nats_url) as h:
            steps = [{"id": s, "task": f"par-{s}"} for s in ("a", "b", "c")]
            steps.append({"id": "join", "task": "par-join", "depends_on": ["a", "b", "c"]})
            await h.client.register({"name": "wide", "steps": steps})
            run_id = await h.client.start("wide")
            for s in ("a", "b", "c"):
                await FakeWorker(h.nc, f"par-{s}").complete(blob(450, s))
            final = await h.client.wait(run_id, timeout=20)
            inspected = await h.client.inspect(run_id)
            return final, inspected, await record_sizes(h, run_id), h.nc.max_payload

    final, inspected, sizes, limit = run(body())
    assert final["status"] == "failed"
    assert "too large for a task message" in final["steps"]["join"]["error"]
    assert max(sizes) < limit
    # The status view holds 1.35 MB of outputs: the largest are elided, and it says which.
    for view in (final, inspected):
        assert view["elided"] and len(msgspec.json.encode(view)) < limit
        for name in view["elided"]:
            step = name.split(".")[1]
            assert view["steps"][step]["output"] == {"elided": name, "bytes": 450 * KB + 2}


def test_three_450kb_sink_outputs_complete_the_run_with_the_output_by_reference(nats_url, run):
    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register({"name": "sinks", "steps": [{"id": s, "task": f"sink-{s}"} for s in "abc"]})
            run_id = await h.client.start("sinks")
            for s in "abc":
                await FakeWorker(h.nc, f"sink-{s}").complete(blob(450, s))
            final = await h.client.wait(run_id, timeout=20)
            js = h.nc.jetstream()
            last = await js.get_msg(HISTORY_STREAM, subject=history_subject(run_id), direct=False)
            return final, decode_record(last.data or b"[]"), await record_sizes(h, run_id), h.nc.max_payload

    final, last_record, sizes, limit = run(body())
    assert final["status"] == "completed"
    assert last_record[-1].type == "workflow.completed" and last_record[-1].payload.output_from_sinks
    assert max(sizes) < limit


def test_an_output_too_large_to_record_fails_its_step_and_cancel_and_delete_still_work(nats_url, run):
    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(
                {
                    "name": "huge-out",
                    "steps": [{"id": "a", "task": "huge-a"}, {"id": "b", "task": "huge-b", "depends_on": ["a"]}],
                }
            )
            run_id = await h.client.start("huge-out")
            worker = FakeWorker(h.nc, "huge-a")
            task, msg = await worker.next()
            # The biggest fact the inbox takes: with its history envelope it cannot be recorded.
            room = h.nc.max_payload - 600
            await worker.report(task, "step.completed", "y" * room)
            await msg.ack()
            failed = await h.client.wait(run_id, timeout=20)
            other = await h.client.start("huge-out")
            cancelled = await h.client.cancel(other)
            deleted = await h.client.delete(run_id)
            return failed, cancelled, deleted

    failed, cancelled, deleted = run(body())
    assert failed["status"] == "failed"
    assert "output too large to record" in failed["steps"]["a"]["error"]
    assert cancelled["cancelled"] and cancelled["status"] == "cancelled"
    assert deleted["deleted"]


def test_the_events_of_a_run_with_1001_attempts_arrive_in_pages(nats_url, run):
    attempts = 1001

    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(
                {
                    "name": "many-attempts",
                    "steps": [
                        {
                            "id": "a",
                            "task": "flaky",
                            "retry": {"max_attempts": attempts - 1, "initial_delay": "1ms", "max_delay": "1ms"},
                        }
                    ],
                }
            )
            run_id = await h.client.start("many-attempts")
            worker = FakeWorker(h.nc, "flaky")
            for n in range(attempts):
                await worker.fail(f"attempt {n + 1} failed: " + "e" * 200, timeout=10)
            final = await h.client.wait(run_id, timeout=30)
            events = await h.client.events(run_id)
            first_page = await h.client.request("run.events", {"run_id": run_id})
            return final, events, first_page

    final, events, first_page = run(body(), timeout=180)
    assert final["status"] == "failed" and final["steps"]["a"]["attempts"] == attempts
    failures = [e for e in events if e["type"] == "step.failed"]
    assert len(failures) == attempts and events[-1]["type"] == "workflow.failed"
    assert first_page["next"] is not None and len(first_page["events"]) < len(events)
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    assert len(msgspec.json.encode(first_page)) < 1024 * KB


def test_a_list_of_10000_runs_out_of_11400_arrives_in_pages(nats_url, run):
    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register({"name": "listed", "steps": [{"id": "a", "task": "listed-a"}]})
            slots = asyncio.Semaphore(200)

            async def start(n: int) -> str:
                async with slots:
                    return await h.client.start("listed", n)

            started = await asyncio.gather(*(start(n) for n in range(11_400)))
            await h.wait_status(started[-1], "running", timeout=120)  # the engine has recorded them all
            listed = await h.client.runs(workflow="listed", limit=10_000)
            page = await h.client.request("run.list", {"workflow": "listed", "limit": 10_000})
            return started, listed, page

    started, listed, page = run(body(), timeout=600)
    assert len(listed) == 10_000 and len({r["run_id"] for r in listed}) == 10_000
    assert {r["run_id"] for r in listed} <= set(started)
    assert [r["created_at"] for r in listed] == sorted((r["created_at"] for r in listed), reverse=True)
    assert page["next"] is not None and len(page["runs"]) < 10_000
