"""The snapshot cache on a real nats-server: a state too large for one message is kept as a
summary, and readers then fold the whole history."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import msgspec
import nats
from nats.js import JetStreamContext

from dagnats.domain import events as ev
from dagnats.domain.definition import StepDef, WorkflowDef
from dagnats.domain.state import RunStatus
from dagnats.infra.engine.history import HistoryStore
from dagnats.infra.engine.streams import ensure_resources

from strategies import RUN_ID, Recorder, at, completed, started_event

DEF = WorkflowDef(name="big", steps=(StepDef(id="a", task="a"), StepDef(id="b", task="b", depends_on=("a",))))


@contextlib.asynccontextmanager
async def _jetstream(nats_url: str) -> AsyncIterator[tuple[nats.NATS, JetStreamContext]]:
    """A connection and its JetStream context, the engine's streams and buckets made."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await ensure_resources(js)
        yield nc, js
    finally:
        await nc.close()


async def _append_each(store: HistoryStore, events: list[ev.Event]) -> int:
    """Each event in a record of its own; the last record's sequence."""
    seq = 0
    for event in events:
        seq = await store.append(RUN_ID, b"[" + ev.encode_event(event) + b"]", seq, f"{RUN_ID}.{event.id}")
    return seq


def test_a_state_too_large_to_cache_is_kept_as_a_summary_and_read_back_whole(nats_url, run):
    big = "x" * 6000
    rec = Recorder()
    rec.feed(started_event(DEF), at(0))
    rec.feed(completed("a", 1, big, at(1)), at(1))
    rec.feed(completed("b", 1, big, at(2)), at(2))
    events = rec.history

    async def body():
        async with _jetstream(nats_url) as (nc, js):
            store = HistoryStore(js, max_payload=12_000)
            seq = await _append_each(store, events)
            await store.save_snapshot(rec.run, seq)
            cached, cached_seq = await store.load_snapshot(RUN_ID)
            loaded, loaded_seq = await store.load(RUN_ID)
            listed = await store.snapshots()
            return rec.run, seq, cached, cached_seq, loaded, loaded_seq, listed

    state, seq, cached, cached_seq, loaded, loaded_seq, listed = run(body())
    assert len(msgspec.json.encode(state)) > 12_000
    assert cached_seq == 0 and cached is not None
    assert cached.status == state.status == RunStatus.COMPLETED
    assert cached.output is None and cached.steps["a"].output is None
    assert {k: s.status for k, s in cached.steps.items()} == {"a": "completed", "b": "completed"}
    assert (loaded, loaded_seq) == (state, seq)
    assert [s.run.status for s in listed] == [RunStatus.COMPLETED]


def _runs(count: int, prefix: str) -> list:
    """``count`` unfinished runs (started, step a queued) named ``<prefix>-<n>``."""
    runs = []
    for n in range(count):
        rec = Recorder()
        rec.feed(started_event(DEF), at(0))
        runs.append(msgspec.structs.replace(rec.run, run_id=f"{prefix}-{n}"))
    return runs


def test_a_partitions_unfinished_runs_are_listed_from_their_open_snapshots_and_leave_when_they_end(nats_url, run):
    from dagnats.domain.partition import partition_of

    partitions = 4
    open_runs = _runs(260, "open")  # more than one page of the server's usual 100-subject batches
    done = msgspec.structs.replace(open_runs[0], status=RunStatus.COMPLETED)

    async def body():
        async with _jetstream(nats_url) as (nc, js):
            store = HistoryStore(js, partitions=partitions)
            for state in open_runs:
                await store.save_snapshot(state, 1)
            # Started and finished at once: the two writes are ordered, no open one is left.
            await asyncio.gather(store.save_snapshot(open_runs[0], 1), store.save_snapshot(done, 2))
            listed = {p: sorted(await store.open_runs(p)) for p in range(partitions)}
            loaded = await store.load_snapshot(done.run_id)
            snapshots = await store.snapshots()
            await store.delete(done.run_id)
            gone = await store.load_snapshot(done.run_id)
            return listed, loaded, snapshots, gone

    listed, loaded, snapshots, gone = run(body())
    expected = {p: sorted(r.run_id for r in open_runs[1:] if partition_of(r.run_id, partitions) == p) for p in range(4)}
    assert listed == expected
    assert sum(len(v) for v in listed.values()) == 259
    assert loaded[0] is not None and loaded[0].status == RunStatus.COMPLETED and loaded[1] == 2
    assert len(snapshots) == 260 and len({s.run.run_id for s in snapshots}) == 260
    assert next(s for s in snapshots if s.run.run_id == done.run_id).run.status == RunStatus.COMPLETED
    assert gone == (None, 0)


def test_a_run_that_ends_unlisted_writes_its_last_snapshot_and_purges_nothing(nats_url, run):
    quick, slow = _runs(2, "ends")
    ended = [msgspec.structs.replace(r, status=RunStatus.COMPLETED) for r in (quick, slow)]

    async def body():
        async with _jetstream(nats_url) as (nc, js):
            purges: list[str] = []

            async def seen(msg):
                purges.append(msg.subject)

            await nc.subscribe("$JS.API.STREAM.PURGE.>", cb=seen)
            store = HistoryStore(js, partitions=4)
            await store.save_snapshot(ended[0], 2, listed=False)
            await nc.flush()
            unlisted = list(purges)
            await store.save_snapshot(slow, 1)
            await store.save_snapshot(ended[1], 2)
            await nc.flush()
            listed = list(purges)
            return unlisted, listed, [await store.load_snapshot(r.run_id) for r in ended]

    unlisted, listed, loaded = run(body())
    assert unlisted == []
    assert len(listed) == 1  # the listed run's open key is taken out
    assert [(r.status, seq) for r, seq in loaded] == [(RunStatus.COMPLETED, 2), (RunStatus.COMPLETED, 2)]


def test_an_unfinished_state_its_open_key_already_holds_is_not_written_again(nats_url, run):
    """A sleeping run woken by its timer is loaded from its open key and taken up again with
    nothing new: saving that same state writes nothing. A newer state is written, and a
    process that never read the key writes it, as before."""
    from dagnats.infra.engine.history import open_key
    from dagnats.infra.wire.names import RUNS_BUCKET

    (sleeper,) = _runs(1, "sleeps")

    async def body():
        async with _jetstream(nats_url) as (nc, js):
            kv = await js.key_value(RUNS_BUCKET)
            key = open_key(sleeper.run_id, 4)

            async def revision() -> int:
                return (await kv.get(key)).revision

            first = HistoryStore(js, partitions=4)
            await first.save_snapshot(sleeper, 3)
            written = await revision()
            woken = HistoryStore(js, partitions=4)  # another process (or this one, later)
            loaded = await woken.load_snapshot(sleeper.run_id)
            await woken.save_snapshot(sleeper, 3)  # taken up with nothing new
            unchanged = await revision()
            await woken.save_snapshot(sleeper, 4)
            newer = await revision()
            return written, loaded[1], unchanged, newer, (await woken.load_snapshot(sleeper.run_id))[1]

    written, loaded_seq, unchanged, newer, last = run(body())
    assert loaded_seq == 3
    assert unchanged == written
    assert newer > written and last == 4


def test_a_delete_waits_for_the_runs_snapshots_under_way(nats_url, run):
    """A run's end is announced once its last snapshot is on its way; a delete that follows
    (the control plane's, on the same store) waits for that save. Two saves queued one behind
    the other: the second sends its put only after the first is stored, so a delete that did
    not wait would purge before it and the snapshot would then serve the deleted run."""
    rec = Recorder()
    rec.feed(started_event(DEF), at(0))
    rec.feed(completed("a", 1, 1, at(1)), at(1))
    rec.feed(completed("b", 1, 2, at(2)), at(2))

    async def body():
        async with _jetstream(nats_url) as (nc, js):
            store = HistoryStore(js)
            seq = await _append_each(store, rec.history)
            saves = [asyncio.ensure_future(store.save_snapshot(rec.run, seq)) for _ in range(2)]
            await asyncio.sleep(0)  # both under way: the first putting, the second queued behind it
            await store.delete(RUN_ID)
            await asyncio.gather(*saves)
            return await store.load_snapshot(RUN_ID), await store.read_after(RUN_ID, 0)

    (cached, cached_seq), records = run(body())
    assert (cached, cached_seq, records) == (None, 0, [])
