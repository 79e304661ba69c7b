"""The owned read model on a real nats-server: when a run's published state is served as
it is, and when the history is read after it."""

from __future__ import annotations

import asyncio

import nats

from dagnats.domain import events as ev
from dagnats.domain.definition import StepDef, WorkflowDef
from dagnats.infra.engine.history import HistoryStore
from dagnats.infra.engine.reader import RunReader
from dagnats.infra.engine.streams import ensure_resources

from strategies import RUN_ID, Recorder, at, completed, started_event

DEF = WorkflowDef(name="two", steps=(StepDef(id="a", task="a"), StepDef(id="b", task="b", depends_on=("a",))))


def _record(events: list[ev.Event]) -> bytes:
    return b"[" + b",".join(ev.encode_event(e) for e in events) + b"]"


def test_a_published_state_is_served_as_is_while_this_process_appends_after_it(nats_url, run):
    """The actor appended the next record and has not published its state yet: the
    record's facts are not acknowledged before it does, so the published state stands."""
    rec = Recorder()
    rec.feed(started_event(DEF), at(0))
    first = rec.run
    rec.feed(completed("a", 1, "A", at(1)), at(1))

    async def body():
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            await ensure_resources(js)
            store = HistoryStore(js)
            reader = RunReader(nc, store, asyncio.get_running_loop())
            seq1 = await store.append(RUN_ID, _record(rec.history[:2]), 0, f"{RUN_ID}.1")
            reader.publish(first, seq1, [])
            seq2 = await store.append(RUN_ID, _record(rec.history[2:]), seq1, f"{RUN_ID}.2")
            served = await reader.get(RUN_ID)
            # Another process appended after the published state: the reader reads on.
            store.appended.pop(RUN_ID)
            read = await reader.get(RUN_ID)
            return seq1, seq2, served, read
        finally:
            await nc.close()

    seq1, seq2, served, read = run(body())
    assert seq2 > seq1
    assert served == first and served.step("a").status == "queued"
    assert read.step("a").status == "completed" and read.step("b").status == "queued"
