"""Flow control through the engine on a real nats-server: concurrency slots, rate
windows, queued runs in priority order, step singletons; workers driven by hand."""

from __future__ import annotations

import asyncio

from harness import EngineHarness, FakeWorker


def _wf(name: str, **step_fields) -> dict:
    return {"name": name, "steps": [{"id": "work", "task": name, **step_fields}]}


async def _take(worker: FakeWorker, count: int, timeout: float = 3.0) -> list:
    taken = []
    for _ in range(count):
        try:
            taken.append(await worker.next(timeout))
        except (TimeoutError, asyncio.TimeoutError):
            break
    return taken


async def _finish(worker: FakeWorker, taken: list) -> None:
    for task, msg in taken:
        await worker.report(task, "step.started")
        await worker.report(task, "step.completed", "ok")
        await msg.ack()


def test_max_task_concurrency_holds_the_rest_until_a_slot_frees(nats_url, run):
    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(_wf("capped", max_task_concurrency=2))
            run_ids = [await h.client.start("capped", {"n": i}) for i in range(5)]
            worker = FakeWorker(h.nc, "capped")
            first = await _take(worker, 5, timeout=2.0)
            waiting = [await h.client.inspect(r) for r in run_ids]
            await _finish(worker, first)
            second = await _take(worker, 5, timeout=3.0)
            await _finish(worker, second)
            third = await _take(worker, 5, timeout=3.0)
            await _finish(worker, third)
            finals = [await h.client.wait(r, timeout=10) for r in run_ids]
            return first, second, third, waiting, finals

    first, second, third, waiting, finals = run(body())
    assert (len(first), len(second), len(third)) == (2, 2, 1)
    held = [w for w in waiting if w["steps"]["work"]["status"] == "waiting"]
    assert len(held) == 3
    assert all(w["steps"]["work"]["waiting"]["kind"] == "limit" for w in held)
    assert all("max_task_concurrency 2 of task capped" in w["steps"]["work"]["waiting"]["description"] for w in held)
    assert [f["status"] for f in finals] == ["completed"] * 5
