"""The snapshot cache on a real nats-server: a state too large for one message is kept as a
summary, and readers then fold the whole history."""

from __future__ import annotations

import msgspec
import nats

from dagnats.domain import events as ev
from dagnats.domain.definition import StepDef, WorkflowDef
from dagnats.domain.state import RunStatus
from dagnats.infra.engine.history import HistoryStore
from dagnats.infra.engine.streams import ensure_resources

from strategies import RUN_ID, Recorder, at, completed, started_event

DEF = WorkflowDef(name="big", steps=(StepDef(id="a", task="a"), StepDef(id="b", task="b", depends_on=("a",))))


def test_a_state_too_large_to_cache_is_kept_as_a_summary_and_read_back_whole(nats_url, run):
    big = "x" * 6000
    rec = Recorder()
    rec.feed(started_event(DEF), at(0))
    rec.feed(completed("a", 1, big, at(1)), at(1))
    rec.feed(completed("b", 1, big, at(2)), at(2))
    events = rec.history

    async def body():
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            await ensure_resources(js)
            store = HistoryStore(js, max_payload=12_000)
            seq = 0
            for event in events:
                seq = await store.append(RUN_ID, b"[" + ev.encode_event(event) + b"]", seq, f"{RUN_ID}.{event.id}")
            await store.save_snapshot(rec.run, seq)
            cached, cached_seq = await store.load_snapshot(RUN_ID)
            loaded, loaded_seq = await store.load(RUN_ID)
            listed = await store.snapshots()
            return rec.run, seq, cached, cached_seq, loaded, loaded_seq, listed
        finally:
            await nc.close()

    state, seq, cached, cached_seq, loaded, loaded_seq, listed = run(body())
    assert len(msgspec.json.encode(state)) > 12_000
    assert cached_seq == 0 and cached is not None
    assert cached.status == state.status == RunStatus.COMPLETED
    assert cached.output is None and cached.steps["a"].output is None
    assert {k: s.status for k, s in cached.steps.items()} == {"a": "completed", "b": "completed"}
    assert (loaded, loaded_seq) == (state, seq)
    assert [s.run.status for s in listed] == [RunStatus.COMPLETED]
