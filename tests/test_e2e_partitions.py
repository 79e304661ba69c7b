"""Several engines on one NATS: partitions divided by leases, a killed engine's partitions
taken over, and a paused owner (SIGSTOP past its lease) stepping down without making any
history diverge. Real `dagnats serve --external` processes and real worker processes."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter

import pytest

from dagnats.domain.partition import partition_of
from dagnats.infra.client import Client
from dagnats.infra.engine.streams import LEASE_TTL

from e2e_support import GATE_HANDLERS, Cli, Serve, WorkerProc, open_gate, wait_for

pytestmark = pytest.mark.e2e

HANDLERS = (
    GATE_HANDLERS
    + """

@w.task("part-step")
async def step(ctx: TaskContext, data) -> str:
    journal(ctx, "begin")
    if isinstance(data, dict) and data.get("gate"):
        await gate(ctx)
    journal(ctx, "end")
    return ctx.step_id
"""
)

CHAIN = {
    "name": "part-chain",
    "steps": [
        {"id": "s1", "task": "part-step"},
        {"id": "s2", "task": "part-step", "depends_on": ["s1"]},
        {"id": "s3", "task": "part-step", "depends_on": ["s2"]},
    ],
}
GATED = {
    "name": "part-gated",
    "steps": [{"id": "hold", "task": "part-step"}, {"id": "after", "task": "part-step", "depends_on": ["hold"]}],
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
            if serve.proc is not None and serve.running:
                os.kill(serve.pid, signal.SIGCONT)  # a paused engine must be able to stop
            serve.stop()


@pytest.fixture
def worker(nats, tmp_path):
    w = WorkerProc(tmp_path, nats.url, HANDLERS, worker_args="max_concurrent=16, ack_wait=3, drain_timeout=1")
    try:
        w.start()
        yield w
    finally:
        w.stop()


def _cluster(cli: Cli) -> dict:
    return cli("status", json=True)["cluster"]


def _cluster_if_answered(cli: Cli) -> dict | None:
    """A paused engine still takes its share of control-plane requests (a queue group), and
    never answers them: while one is paused, a status request may time out."""
    try:
        return _cluster(cli)
    except AssertionError:
        return None


def _recorded(url: str, run_id: str) -> list[str]:
    """The types of the events in the run's history, read from the stream (not the control
    plane, whose requests a paused engine takes its share of and never answers)."""
    import nats

    from dagnats.domain.events import decode_record
    from dagnats.infra.wire.names import HISTORY_STREAM
    from dagnats.infra.wire.reading import stored_messages
    from dagnats.infra.wire.subjects import history_subject

    async def go():
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            return [
                e.type
                async for msg in stored_messages(js, HISTORY_STREAM, history_subject(run_id))
                for e in decode_record(msg.data or b"[]")
            ]
        finally:
            await nc.close()

    return asyncio.run(go())


def _owner_pid(url: str, partition: int) -> int | None:
    """The PID of the live engine that owns ``partition``, read from the lease buckets."""
    import nats

    from dagnats.infra.engine.leases import heartbeats, owners

    async def go():
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            beats, owned = await heartbeats(js), await owners(js)
        finally:
            await nc.close()
        pids = {beat.engine: beat.pid for beat in beats}
        return pids.get(owned.get(partition, ""))

    return asyncio.run(go())


def _divided(cli: Cli, engines: int):
    """The cluster view once `engines` live engines own every partition between them."""
    view = _cluster_if_answered(cli)
    if view is None:
        return None
    owned = [set(e["partitions"]) for e in view["engines"]]
    everything = set(range(view["partitions"]))
    if len(owned) == engines and all(owned) and set().union(*owned) == everything and not view["unowned"]:
        if sum(len(o) for o in owned) == len(everything):  # disjoint
            return view
    return None


def _histories(url: str, run_ids: list[str]) -> list[list[dict]]:
    async def go():
        async with Client(url, timeout=30) as client:
            return await asyncio.gather(*(client.events(r) for r in run_ids))

    return asyncio.run(go())


ONCE = ("workflow.started", "workflow.completed", "step.started", "step.completed", "step.failed")


def _check_histories(histories: list[list[dict]]) -> None:
    """Records in order, every transition once: nothing diverged (a record's events share its seq)."""
    for events in histories:
        seqs = [e["seq"] for e in events]
        assert seqs == sorted(seqs), seqs
        transitions = Counter((e["type"], e["step_id"], e["attempt"]) for e in events if e["type"] in ONCE)
        assert not [t for t, n in transitions.items() if n > 1], transitions
        assert transitions[("workflow.completed", None, None)] == 1


def _start_and_wait(url: str, workflow: str, inputs: list, during=None, timeout: float = 120.0) -> list[dict]:
    async def go():
        async with Client(url, timeout=30) as client:
            run_ids = list(await asyncio.gather(*(client.start(workflow, data) for data in inputs)))
            if during is not None:
                await asyncio.to_thread(during)
            return await asyncio.gather(*(client.wait(r, timeout=timeout) for r in run_ids))

    return asyncio.run(go())


def test_two_engines_divide_the_partitions_and_status_shows_who_owns_what(nats, engines):
    cli = Cli(nats.url)
    view = wait_for(lambda: _divided(cli, 2), 30, "two engines to own every partition between them")
    assert {e["pid"] for e in view["engines"]} == {e.pid for e in engines}
    assert all(e["lease_age_s"] is not None and e["lease_age_s"] < LEASE_TTL for e in view["engines"])
    human = cli("status").stdout
    assert f"Engines (2; {view['partitions']} partitions" in human
    assert "PARTITION" in human and "PENDING" in human


def test_killing_one_of_two_engines_under_load_loses_no_run(nats, engines, worker, tmp_path):
    """The issue's report: 100 runs of a 3-step chain in flight, one of two engines killed
    with -9. Its partitions are taken over once its heartbeat lapses, and every run ends."""
    cli = Cli(nats.url)
    cli.register(CHAIN, tmp_path)
    wait_for(lambda: _divided(cli, 2), 30, "two engines to own every partition between them")
    victim = engines[0]

    def kill_mid_way():
        wait_for(lambda: len(worker.journal.executions()) >= 60, 60, "the load to be under way")
        victim.kill()

    started = time.monotonic()
    runs = _start_and_wait(nats.url, "part-chain", [{"n": i} for i in range(100)], during=kill_mid_way)
    elapsed = time.monotonic() - started
    assert [r["status"] for r in runs] == ["completed"] * 100, elapsed
    survivor = wait_for(lambda: _divided(cli, 1), 30, "the survivor to own every partition")
    assert survivor["engines"][0]["pid"] == engines[1].pid
    _check_histories(_histories(nats.url, [r["run_id"] for r in runs]))
    finished = [e for e in worker.journal.executions() if e.end is not None]
    assert {(e.run, e.step) for e in finished} == {(r["run_id"], s) for r in runs for s in ("s1", "s2", "s3")}


def test_a_paused_owner_steps_down_and_no_history_diverges(nats, engines, worker, tmp_path):
    """SIGSTOP the owner of a run's partition past its lease; the other engine takes over and
    moves the run on; SIGCONT the old owner: it steps down (and says so), the run ends once,
    and its history has no gap and no fact twice."""
    cli = Cli(nats.url)
    cli.register(GATED, tmp_path)
    view = wait_for(lambda: _divided(cli, 2), 30, "two engines to own every partition between them")
    run_id = cli.start("part-gated", {"gate": True})
    partition = partition_of(run_id, view["partitions"])
    owner_pid = next(e["pid"] for e in view["engines"] if partition in e["partitions"])
    zombie = next(e for e in engines if e.pid == owner_pid)
    other = next(e for e in engines if e.pid != owner_pid)
    wait_for(lambda: cli.status(run_id)["steps"]["hold"]["status"] == "running", 20, "step hold to run")

    os.kill(zombie.pid, signal.SIGSTOP)
    try:
        # The other engine takes the partition once the paused one's heartbeat lapses (read
        # from KV: the paused engine still takes its share of control-plane requests).
        wait_for(
            lambda: _owner_pid(nats.url, partition) == other.pid,
            LEASE_TTL + 30,
            "the other engine to take the paused one's partitions",
        )
        open_gate(worker.journal, run_id, "hold")  # the step ends; the new owner records it
        wait_for(lambda: "workflow.completed" in _recorded(nats.url, run_id), 40, "the new owner to finish the run")
    finally:
        os.kill(zombie.pid, signal.SIGCONT)
    final = cli.wait_status(run_id, "completed", timeout=30)
    wait_for(lambda: "stepping down" in zombie.output, 20, "the resumed engine to step down")
    # Back in the cluster, it gets its share again (handed over, not taken).
    wait_for(lambda: _divided(cli, 2), 40, "the partitions to be divided again")
    assert final["steps"]["after"]["status"] == "completed"
    _check_histories(_histories(nats.url, [run_id]))
    executions = Counter(e.step for e in worker.journal.executions(run_id))
    assert executions == {"hold": 1, "after": 1}
