"""The engine on a 3-node NATS cluster with R3 streams, and the loss of one node."""

from __future__ import annotations

import asyncio

from dagnats.domain.errors import Unavailable
from dagnats.infra.worker import Worker

from harness import CHAIN3, EngineHarness


async def settled(call, timeout: float = 45.0):
    """Retry a control-plane call while new R3 streams elect their leaders."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return await call()
        except Unavailable:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.5)


def _worker(urls: str, delay: float = 0.0) -> Worker:
    w = Worker(urls.split(",")[0], worker_id="cluster-worker")

    def handler_for(task: str):
        async def handler(ctx, data):
            await asyncio.sleep(delay)
            return f"{task}:{data}"

        return handler

    for task in ("ta", "tb", "tc"):
        w.task(task)(handler_for(task))
    return w


def test_runs_complete_on_r3_streams_across_a_three_node_cluster(cluster3, run):
    urls = ",".join(s.url for s in cluster3)

    async def body():
        async with EngineHarness(urls, replicas=3) as h:
            info = await h.nc.jetstream().stream_info("WORKFLOW_HISTORY")
            w = _worker(urls)
            await w.start()
            try:
                await settled(lambda: h.client.register({**CHAIN3, "name": "cluster-chain"}))
                run_ids = [await settled(lambda i=i: h.client.start("cluster-chain", i)) for i in range(5)]
                finals = [await h.wait_status(r, "completed", timeout=30) for r in run_ids]
            finally:
                await w.stop()
            return info.config.num_replicas, finals

    replicas, finals = run(body(), timeout=90)
    assert replicas == 3
    assert [f["output"] for f in finals] == [f"tc:tb:ta:{i}" for i in range(5)]


def test_a_run_completes_when_one_node_of_three_is_killed_mid_run(cluster3, run):
    urls = ",".join(s.url for s in cluster3)
    victim = cluster3[2]  # the engine, worker and client connect to n1 first

    async def body():
        async with EngineHarness(urls, replicas=3) as h:
            w = _worker(urls, delay=0.3)
            await w.start()
            try:
                await settled(lambda: h.client.register({**CHAIN3, "name": "node-loss"}))
                run_id = await settled(lambda: h.client.start("node-loss", "x"))
                await h.wait_step(run_id, "a", "completed", timeout=30)
                victim.kill()
                final = await h.wait_status(run_id, "completed", timeout=60)
                events = await h.client.events(run_id)
            finally:
                await w.stop()
                victim.start_sync()
            return final, events

    final, events = run(body(), timeout=150)
    assert final["output"] == "tc:tb:ta:x"
    completed = [e["step_id"] for e in events if e["type"] == "step.completed"]
    assert sorted(completed) == ["a", "b", "c"]  # each step recorded once
