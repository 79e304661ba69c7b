"""Partition leases: an engine does not wait out the lease of a dead engine of its own machine."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import msgspec
import nats

from dagnats.infra.engine.leases import Heartbeat, PartitionLeases, gone, process_space
from dagnats.infra.engine.streams import ensure_resources
from dagnats.infra.wire.names import ENGINES_BUCKET


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: the PID names no process now
    return child.pid


def test_gone_only_for_a_missing_process_of_this_process_space():
    here = process_space()
    assert here  # Linux
    dead = _dead_pid()
    assert gone(Heartbeat(engine="e", pid=dead, space=here), here)
    assert not gone(Heartbeat(engine="e", pid=os.getppid(), space=here), here)  # alive
    assert not gone(Heartbeat(engine="e", pid=dead, space="another-boot/pid:[1]"), here)  # elsewhere
    assert not gone(Heartbeat(engine="e", pid=dead), here)  # an engine that does not say where it runs
    assert not gone(Heartbeat(engine="e", pid=os.getpid(), space=here), here)  # this very process
    assert not gone(Heartbeat(engine="e", pid=dead, space=here), "")  # where the space is unknown


async def _takeover(url: str, pid: int) -> tuple[set[int], list, int]:
    """Engine A owns every partition, then "dies" (stops renewing) with ``pid`` in its
    heartbeat; engine B starts: what it owns after its first tick, what it was told."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        partitions = await ensure_resources(js)
        gained: list = []

        async def gain(partition: int, previous: str | None) -> None:
            gained.append((partition, previous))

        async def lose(partition: int, graceful: bool) -> None:
            return None

        a = PartitionLeases(js, "engine-a", partitions, gain, lose, renew_every=3600)
        await a.start()
        assert set(a.owned) == set(range(partitions))
        a._task.cancel()  # no renewal, no release: as if killed
        beat = Heartbeat(engine="engine-a", pid=pid, space=process_space())
        await (await js.key_value(ENGINES_BUCKET)).put("engine-a", msgspec.json.encode(beat))
        gained.clear()
        b = PartitionLeases(js, "engine-b", partitions, gain, lose, renew_every=3600)
        await b.start()
        owned = set(b.owned)
        b._task.cancel()
        return owned, gained, partitions
    finally:
        await nc.close()


def test_a_restarted_engine_takes_a_dead_predecessors_partitions_on_its_first_tick(nats_url, run):
    owned, gained, partitions = run(_takeover(nats_url, _dead_pid()))
    assert owned == set(range(partitions))
    assert gained == [(p, "engine-a") for p in range(partitions)]


def test_an_engine_still_waits_out_the_lease_of_a_live_one(nats_url, run):
    owned, gained, _ = run(_takeover(nats_url, os.getppid()))
    assert owned == set() and gained == []


def test_an_engine_cut_off_past_its_lease_steps_down_and_takes_back_what_no_one_took(nats_url, run):
    """An engine that could not renew for longer than the TTL (NATS electing leaders after a
    node restart) steps down from every partition; no other engine took them (their owner
    keys still name it), so it claims them back on that tick instead of owning nothing."""

    async def body():
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            partitions = await ensure_resources(js)
            events: list = []

            async def gain(partition: int, previous: str | None) -> None:
                events.append(("gain", partition, previous))

            async def lose(partition: int, graceful: bool) -> None:
                events.append(("lose", partition, graceful))

            a = PartitionLeases(js, "engine-a", partitions, gain, lose, renew_every=3600)
            await a.start()
            a._task.cancel()
            assert set(a.owned) == set(range(partitions))
            events.clear()
            a.renewed = time.monotonic() - a.ttl - 1  # the last renewal the server took, too long ago
            await a.tick()
            return set(a.owned), [p for p in range(partitions) if a.holds(p)], events, partitions
        finally:
            await nc.close()

    owned, held, events, partitions = run(body())
    assert [e for e in events if e[0] == "lose"] == [("lose", p, False) for p in range(partitions)]
    assert [e for e in events if e[0] == "gain"] == [("gain", p, "engine-a") for p in range(partitions)]
    assert owned == set(range(partitions)) and held == list(range(partitions))
