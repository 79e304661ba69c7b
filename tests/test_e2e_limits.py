"""Flow control across engines: two `dagnats serve --external` on one NATS, worker
processes that journal when each task began and ended, and the journal checked
against the limits — also with one engine killed with -9 in the middle.

The concurrency check is exact on the workers' clock: a slot is freed only once
the engine recorded the result, which the worker reports after its end line.
The rate check is exact on the instants the rate window counted each step at
(``rate_at`` of its ``step.admitted``): never more than the limit in any period.
A worker begins a task a delivery after that (a few ms, more on a loaded
machine), so its first starts are checked over the period less the largest delay
seen between a step's admission and its start.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from dagnats.infra.client import Client

from e2e_support import Cli, Serve, WorkerProc, wait_for

pytestmark = pytest.mark.e2e

HANDLERS = """
import random
from typing import Any


@w.task("metered")
async def metered(ctx: TaskContext, data: Any) -> int:
    journal(ctx, "begin")
    await asyncio.sleep(random.uniform(0.005, 0.03))
    journal(ctx, "end")
    return data["n"]


@w.task("hog")
async def hog(ctx: TaskContext, data: Any) -> int:
    journal(ctx, "begin")
    await asyncio.sleep(data.get("hold", 0))
    journal(ctx, "end")
    return data["n"]
"""

SLOTS, RATE, PERIOD = 5, 50, 1.0

METERED = {
    "name": "metered",
    "steps": [
        {
            "id": "work",
            "task": "metered",
            "max_task_concurrency": SLOTS,
            "rate_limit": {"limit": RATE, "period": f"{int(PERIOD * 1000)}ms"},
        }
    ],
}


@pytest.fixture
def engines(nats):
    pair = [Serve(nats.url, external=True), Serve(nats.url, external=True)]
    try:
        for serve in pair:
            serve.start()
        yield pair
    finally:
        for serve in pair:
            serve.stop()


@pytest.fixture
def workers(nats, tmp_path):
    w = WorkerProc(tmp_path, nats.url, HANDLERS, worker_args="max_concurrent=8, ack_wait=5, drain_timeout=1")
    try:
        w.start()
        w.start()
        yield w
    finally:
        w.stop()


def _start_and_wait(url: str, workflow: str, inputs: list, kill=None, timeout: float = 240.0) -> list[dict]:
    pending_kill = [kill] if kill is not None else []

    async def go():
        async with Client(url, timeout=30) as client:
            run_ids = []
            for first in range(0, len(inputs), 100):
                batch = inputs[first : first + 100]
                run_ids += await asyncio.gather(*(client.start(workflow, data) for data in batch))
                if pending_kill and first >= len(inputs) // 2:
                    pending_kill.pop()()
            return await asyncio.gather(*(client.wait(r, timeout=timeout) for r in run_ids))

    return asyncio.run(go())


def _admitted(url: str, run_ids: list[str]) -> dict[str, float]:
    """Each run's step ``work``: the instant (s) its rate window last counted it at. A step
    asking again (a rebuilt run) moves its one entry in the window: the last one counts."""
    from dagnats.domain.events import parse_timestamp

    async def go():
        async with Client(url, timeout=30) as client:
            return await asyncio.gather(*(client.events(r) for r in run_ids))

    counted: dict[str, float] = {}
    for run_id, events in zip(run_ids, asyncio.run(go()), strict=True):
        for event in events:
            if event["type"] == "step.admitted" and event.get("step_id") == "work":
                counted[run_id] = parse_timestamp(event["payload"]["rate_at"]).timestamp()
    return counted


def _most_in_flight(executions) -> int:
    edges = sorted([(e.start, 1) for e in executions] + [(e.end, -1) for e in executions])
    most = busy = 0
    for _, delta in edges:  # an end sorts before a start at the same instant
        busy += delta
        most = max(most, busy)
    return most


def _most_starts_in_a_window(starts: list[float], window: float) -> int:
    starts = sorted(starts)
    most, first = 0, 0
    for last, t in enumerate(starts):
        while t - starts[first] >= window:
            first += 1
        most = max(most, last - first + 1)
    return most


def _check(url: str, workers: WorkerProc, runs: list[dict], count: int) -> None:
    assert [r["status"] for r in runs] == ["completed"] * count
    executions = workers.journal.executions(step="work")
    finished = [e for e in executions if e.end is not None]
    assert len({e.run for e in finished}) == count
    assert _most_in_flight(finished) <= SLOTS
    counted = _admitted(url, [r["run_id"] for r in runs])
    assert len(counted) == count, "every step records the instant its rate window counted it"
    assert _most_starts_in_a_window(list(counted.values()), PERIOD) <= RATE
    # A task redelivered after an engine died runs again without a new admission: the
    # workers' side is checked on each run's first start, the one its admission paid for.
    first_starts: dict[str, float] = {}
    for e in executions:
        first_starts[e.run] = min(e.start, first_starts.get(e.run, e.start))
    delay = max(start - counted[run_id] for run_id, start in first_starts.items())
    window = max(PERIOD - delay, 0.001)
    assert _most_starts_in_a_window(list(first_starts.values()), window) <= RATE


def test_two_engines_never_exceed_a_concurrency_and_a_rate_limit(nats, engines, workers, tmp_path):
    Cli(nats.url).register(METERED, tmp_path)
    count = 600
    started = time.monotonic()
    try:
        runs = _start_and_wait(nats.url, "metered", [{"n": i} for i in range(count)])
    finally:
        (tmp_path / "engines.log").write_text("\n".join(e.output for e in engines))
    elapsed = time.monotonic() - started
    _check(nats.url, workers, runs, count)
    # With no crash every task ran once: an engine whose write conflicted with the other's
    # does not dispatch again what the other dispatched.
    assert len(workers.journal.executions(step="work")) == count
    # The rate limit binds: 600 tasks at 50 per second take at least 11 seconds.
    assert elapsed >= (count - RATE) / RATE * PERIOD


def test_killing_one_engine_mid_way_stays_under_the_limits_and_every_run_completes(nats, engines, workers, tmp_path):
    Cli(nats.url).register(METERED, tmp_path)
    count = 400
    runs = _start_and_wait(nats.url, "metered", [{"n": i} for i in range(count)], kill=engines[0].kill)
    assert not engines[0].running
    _check(nats.url, workers, runs, count)


def _freed(listed: list[dict]) -> list[dict] | None:
    hog = [item for item in listed if item["key"] == "task.hog"]
    return listed if hog and hog[0]["in_use"] == 0 else None


HOG = {"name": "hog", "steps": [{"id": "work", "task": "hog", "max_task_concurrency": 2}]}


def test_slots_held_by_a_killed_engine_come_back_and_the_queue_proceeds(nats, engines, workers, tmp_path):
    """The slots of runs whose engine died are released by the engine that takes the runs
    over (their facts are redelivered); slots taken but never recorded are reaped within
    20 s. Either way the queued runs proceed."""
    cli = Cli(nats.url)
    cli.register(HOG, tmp_path)
    first = [cli.start("hog", {"n": i, "hold": 8}) for i in range(2)]
    wait_for(lambda: len(workers.journal.executions(step="work")) == 2, 20, "both slots to be taken")
    queued = [cli.start("hog", {"n": i + 2}) for i in range(3)]
    for run_id in queued:  # the run runs; its step waits for a slot
        wait_for(lambda r=run_id: cli.status(r)["steps"]["work"]["status"] == "waiting", 20, f"{run_id} to wait")
    engines[0].kill()
    engines[1].kill()
    replacement = Serve(nats.url, external=True).start()
    try:
        finals = [cli.wait_status(r, "completed", timeout=90) for r in first + queued]
        # The last release goes out after the run's completion is recorded.
        listed = wait_for(lambda: _freed(cli("limits", json=True)), 20, "the slots to come back")
    finally:
        replacement.stop()
    assert [f["status"] for f in finals] == ["completed"] * 5
    hog = [item for item in listed if item["key"] == "task.hog"]
    assert hog and hog[0]["in_use"] == 0 and hog[0]["queued"] == 0 and hog[0]["limit"] == 2
    executions = workers.journal.executions(step="work")
    assert _most_in_flight([e for e in executions if e.end is not None]) <= 2
    assert {e.run for e in executions if e.end is not None} == set(first + queued)
