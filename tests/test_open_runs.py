"""The index of unfinished runs (``OPEN_RUNS``) against a real nats-server."""

from __future__ import annotations

import nats

from dagnats.domain.partition import partition_of
from dagnats.domain.state import RunStatus, WorkflowRun
from dagnats.infra.engine.open_runs import OpenRuns
from dagnats.infra.engine.streams import ensure_resources

PARTITIONS = 4


def _runs_in(partition: int, count: int, prefix: str = "r") -> list[str]:
    """The first ``count`` run ids ``<prefix>-<n>`` that fall in ``partition``."""
    found: list[str] = []
    n = 0
    while len(found) < count:
        run_id = f"{prefix}-{n}"
        if partition_of(run_id, PARTITIONS) == partition:
            found.append(run_id)
        n += 1
    return found


async def _open_runs(url: str) -> tuple[nats.NATS, OpenRuns]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await ensure_resources(js, partitions=PARTITIONS)
    return nc, OpenRuns(nc, js, PARTITIONS)


def test_an_unfinished_run_is_listed_under_its_partition(nats_url, run):
    async def body():
        nc, index = await _open_runs(nats_url)
        run_id = _runs_in(2, 1)[0]
        await index.mark(WorkflowRun(run_id=run_id, status=RunStatus.RUNNING))
        listed = {p: await index.listed(p) for p in range(PARTITIONS)}
        await nc.close()
        return run_id, listed

    run_id, listed = run(body())
    assert listed == {0: [], 1: [], 2: [run_id], 3: []}


def test_marking_a_run_finished_takes_it_out(nats_url, run):
    async def body():
        nc, index = await _open_runs(nats_url)
        run_id = _runs_in(1, 1)[0]
        await index.mark(WorkflowRun(run_id=run_id, status=RunStatus.RUNNING))
        await index.mark(WorkflowRun(run_id=run_id, status=RunStatus.RUNNING))  # again: still one entry
        before = await index.listed(1)
        await index.mark(WorkflowRun(run_id=run_id, status=RunStatus.COMPLETED))
        after = await index.listed(1)
        await nc.close()
        return run_id, before, after

    run_id, before, after = run(body())
    assert before == [run_id]
    assert after == []


def test_a_partition_of_many_runs_is_listed_whole_and_alone(nats_url, run):
    async def body():
        nc, index = await _open_runs(nats_url)
        mine = _runs_in(3, 250)
        others = _runs_in(0, 20, prefix="other")
        for run_id in mine + others:
            await index.mark(WorkflowRun(run_id=run_id, status=RunStatus.RUNNING))
        finished = mine[:10]
        for run_id in finished:
            await index.mark(WorkflowRun(run_id=run_id, status=RunStatus.FAILED))
        listed = await index.listed(3)
        await nc.close()
        return mine, finished, others, listed

    mine, finished, others, listed = run(body(), timeout=60)
    assert sorted(listed) == sorted(set(mine) - set(finished))
    assert not set(listed) & set(others)
