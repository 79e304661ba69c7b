"""The owned read model on a real nats-server: when a run's published state is served as
it is, and when the history is read after it."""

from __future__ import annotations

import asyncio

import nats

from dagnats.domain import events as ev
from dagnats.domain.definition import StepDef, WorkflowDef
from dagnats.domain.partition import partition_of
from dagnats.infra.engine.history import HistoryStore
from dagnats.infra.engine.reader import RunReader
from dagnats.infra.engine.streams import ensure_resources

from strategies import RUN_ID, Recorder, at, completed, started_event

DEF = WorkflowDef(name="two", steps=(StepDef(id="a", task="a"), StepDef(id="b", task="b", depends_on=("a",))))


def _record(events: list[ev.Event]) -> bytes:
    return b"[" + b",".join(ev.encode_event(e) for e in events) + b"]"


async def _with_reader(nats_url: str, scenario):
    """``scenario(js, store, reader)`` on a connection of its own, the engine's streams in place."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await ensure_resources(js)
        store = HistoryStore(js)
        return await scenario(js, store, RunReader(nc, store, asyncio.get_running_loop()))
    finally:
        await nc.close()


def _two_records() -> tuple[Recorder, object]:
    """A run started (its first record: the start and its dispatch) and step a completed
    (the second); and the state after the first."""
    rec = Recorder()
    rec.feed(started_event(DEF), at(0))
    first = rec.run
    rec.feed(completed("a", 1, "A", at(1)), at(1))
    return rec, first


def test_a_published_state_is_served_as_is_while_this_process_appends_after_it(nats_url, run):
    """The actor appended the next record and has not published its state yet: the
    record's facts are not acknowledged before it does, so the published state stands."""
    rec, first = _two_records()

    async def scenario(js, store: HistoryStore, reader: RunReader):
        seq1 = await store.append(RUN_ID, _record(rec.history[:2]), 0, f"{RUN_ID}.1")
        reader.publish(first, seq1, [])
        seq2 = await store.append(RUN_ID, _record(rec.history[2:]), seq1, f"{RUN_ID}.2")
        served = await reader.get(RUN_ID)
        # Another process appended after the published state: the reader reads on.
        store.appended.pop(RUN_ID)
        read = await reader.get(RUN_ID)
        return seq1, seq2, served, read

    seq1, seq2, served, read = run(_with_reader(nats_url, scenario))
    assert seq2 > seq1
    assert served == first and served.step("a").status == "queued"
    assert read.step("a").status == "completed" and read.step("b").status == "queued"


def test_a_partition_lost_and_taken_back_serves_its_runs_from_the_history(nats_url, run):
    """This engine's actor published a state, then the run's partition went to another
    engine, which appended after it: even with the partition back, the state published
    here is not the newest, and the run is read from the history (it used to be served
    as it was: a completed run reported running, by the engine that owns it)."""
    rec, first = _two_records()

    async def scenario(js, store: HistoryStore, reader: RunReader):
        other = HistoryStore(js)  # the engine the partition was handed over to
        seq1 = await store.append(RUN_ID, _record(rec.history[:2]), 0, f"{RUN_ID}.1")
        reader.publish(first, seq1, [])
        await other.append(RUN_ID, _record(rec.history[2:]), seq1, f"{RUN_ID}.2")
        stale = await reader.get(RUN_ID)  # nothing told this engine yet
        partition = partition_of(RUN_ID, 16)
        reader.forget_partition((partition + 1) % 16, 16)  # another partition: nothing changes
        kept = RUN_ID in store.appended
        reader.forget_partition(partition, 16)  # lost; owning it again changes nothing here
        read = await reader.get(RUN_ID)
        return stale, kept, read, RUN_ID in store.appended

    stale, kept, read, still_appended = run(_with_reader(nats_url, scenario))
    assert stale == first  # what the shortcut served before
    assert kept and not still_appended
    assert read.step("a").status == "completed" and read.step("b").status == "queued"
