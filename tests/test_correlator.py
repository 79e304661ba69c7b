"""The waiter index and the correlator, on a real nats-server, the correlator driven by hand.

Each test names its own event and runs (a uuid), so most share the session's
server (the sweep, which reads every waiter, has its own); the runs'
statuses come from a small dict instead of an engine.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import nats
import pytest

from dagnats.domain import events as ev
from dagnats.domain.actions import RegisterWaiter, RemoveWaiter
from dagnats.domain.definition import decode_workflow
from dagnats.domain.state import RunStatus
from dagnats.infra.engine import waiters
from dagnats.infra.engine.admission import Admission
from dagnats.infra.engine.correlator import Correlator
from dagnats.infra.engine.streams import ensure_resources
from dagnats.infra.wire import reading
from dagnats.infra.wire.names import INBOX_STREAM
from dagnats.infra.wire.reading import stored_messages
from dagnats.infra.wire.subjects import event_subject, stored_inbox_filter

NOW = datetime.now(UTC)
LATER = NOW + timedelta(seconds=1)
RUNNING = RunStatus.RUNNING


def _stamp(moment: datetime) -> str:
    return ev.format_timestamp(moment)


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass
class World:
    """A connection, a correlator, the runs' statuses and the cancels it asked for."""

    js: Any
    correlator: Correlator
    statuses: dict[str, RunStatus] = field(default_factory=dict)
    cancels: list[tuple[str, str, str]] = field(default_factory=list)

    async def wait(self, run_id: str, step: str = "s", attempt: int = 1, **match: Any) -> None:
        """Register a wait_for_event step of a running run (``match``: event, left, op, right, since, expires_at)."""
        self.statuses.setdefault(run_id, RUNNING)
        fields = {
            "left": "x",
            "op": "eq",
            "right": None,
            "since": _stamp(NOW),
            "expires_at": _stamp(NOW + timedelta(hours=1)),
        }
        fields.update(match)
        await waiters.register_step_waiter(self.js, run_id, RegisterWaiter(step_id=step, attempt=attempt, **fields))

    async def keys(self, event: str) -> list[str]:
        return sorted(key for key, _ in await waiters.waiters_of(self.js, event))

    async def matched(self, run_id: str) -> list[ev.Event]:
        return [
            event
            async for msg in stored_messages(self.js, INBOX_STREAM, stored_inbox_filter(run_id))
            if isinstance(event := ev.decode_event(msg.data), ev.StepWaitMatched)
        ]


@asynccontextmanager
async def world(url: str) -> AsyncIterator[World]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await ensure_resources(js)
    state = World(js, None)  # type: ignore[arg-type]

    async def status_of(run_id: str) -> RunStatus | None:
        return state.statuses.get(run_id)

    async def cancel(run_id: str, reason: str, fact_id: str) -> None:
        state.cancels.append((run_id, reason, fact_id))

    state.correlator = Correlator(js, status_of, cancel)
    try:
        yield state
    finally:
        await nc.close()


OPERATOR_CASES = [
    # op, right, a value that does not match, one that does
    ("eq", "gold", "silver", "gold"),
    ("ne", "gold", "gold", "silver"),
    ("lt", 10, 10, 9.5),
    ("lte", 10, 11, 10),
    ("gt", 10, 10, 11),
    ("gte", "b", "a", "b"),
]


@pytest.mark.parametrize(("op", "right", "miss", "hit"), OPERATOR_CASES)
def test_each_operator_hands_the_step_only_the_event_that_matches(shared_url, run, op, right, miss, hit):
    event, run_id = _name(op), _name("run")

    async def body():
        async with world(shared_url) as w:
            await w.wait(run_id, step="wait", attempt=2, event=event, left="order.level", op=op, right=right)
            missed = await w.correlator.correlate(event, {"order": {"level": miss}}, LATER, 7)
            kept = await w.keys(event)
            handed = await w.correlator.correlate(event, {"order": {"level": hit}}, LATER, 8)
            return missed, kept, handed, await w.keys(event), await w.matched(run_id)

    missed, kept, handed, left_over, facts = run(body())
    assert (missed, len(kept), handed, left_over) == (0, 1, 1, [])
    [fact] = facts
    assert (fact.step_id, fact.attempt, fact.id) == ("wait", 2, "wait.2.step.wait.matched")
    assert fact.payload == ev.EventMatch(data={"order": {"level": hit}}, seq=8)


def test_eq_matches_numbers_and_their_text_as_compare_does(shared_url, run):
    event = _name("numbers")
    cases = [  # right, event value, matches
        (42, 42.0, True),
        (42, "42", True),
        ("42", 42, True),
        ("42.0", 42, False),  # the same index key as 42, but compare tells them apart
        (1.5, "1.5", True),
        (True, "true", True),
    ]

    async def body():
        async with world(shared_url) as w:
            outcomes = []
            for i, (right, value, _) in enumerate(cases):
                await w.wait(f"{event}-r{i}", event=event, right=right)
                outcomes.append(await w.correlator.correlate(event, {"x": value}, LATER, i + 1))
                await waiters.purge_waiters(w.js, f"{event}.>")
            return outcomes

    assert run(body()) == [1 if hit else 0 for _, _, hit in cases]


def test_an_event_without_the_path_matches_nothing_and_the_waiter_stays(shared_url, run):
    event, run_id = _name("missing"), _name("run")

    async def body():
        async with world(shared_url) as w:
            await w.wait(run_id, event=event, left="order.id", right="o-1")
            handed = [
                await w.correlator.correlate(event, data, LATER, 1)
                for data in ({"order": {}}, {"other": 1}, "a plain string", None, {"order": ["o-1"]})
            ]
            return handed, await w.keys(event)

    handed, keys = run(body())
    assert handed == [0] * 5 and len(keys) == 1


def test_events_published_before_the_wait_began_do_not_match(shared_url, run):
    event, run_id = _name("early"), _name("run")

    async def body():
        async with world(shared_url) as w:
            await w.wait(run_id, event=event, right="v", since=_stamp(NOW))
            before = await w.correlator.correlate(event, {"x": "v"}, NOW - timedelta(milliseconds=1), 1)
            after = await w.correlator.correlate(event, {"x": "v"}, LATER, 2)
            return before, after, [fact.payload.seq for fact in await w.matched(run_id)]

    assert run(body()) == (0, 1, [2])


def test_an_expired_waiter_is_removed_without_matching(shared_url, run):
    event, run_id = _name("expired"), _name("run")

    async def body():
        async with world(shared_url) as w:
            await w.wait(run_id, event=event, op="ne", right="v", expires_at=_stamp(NOW))
            handed = await w.correlator.correlate(event, {"x": "w"}, LATER, 1)
            return handed, await w.keys(event), await w.matched(run_id)

    assert run(body()) == (0, [], [])


def test_a_matching_waiter_of_a_finished_or_unknown_run_is_removed_without_a_fact(shared_url, run):
    event, done, gone = _name("finished"), _name("done"), _name("gone")

    async def body():
        async with world(shared_url) as w:
            await w.wait(done, event=event, op="ne", right="z")
            await w.wait(gone, event=event, op="ne", right="z")
            w.statuses[done] = RunStatus.COMPLETED
            del w.statuses[gone]
            handed = await w.correlator.correlate(event, {"x": "a"}, LATER, 1)
            return handed, await w.keys(event), await w.matched(done)

    assert run(body()) == (0, [], [])


def _cancellable(name: str, event: str, match: dict | None = None, timeout: str | None = None):
    entry: dict[str, Any] = {"event": event}
    if match:
        entry["match"] = match
    if timeout:
        entry["timeout"] = timeout
    wf = {"name": name, "steps": [{"id": "a", "task": "t"}], "cancel_on": [entry]}
    return decode_workflow(msgspec.json.encode(wf))


async def _admit(w: World, wf, data: Any, run_id: str) -> None:
    admission = Admission(w.js)
    await admission.open()
    await admission.register_waiters(wf, data, run_id, lambda ns: _stamp(NOW + timedelta(microseconds=ns // 1000)))
    w.statuses[run_id] = RUNNING


def test_a_cancel_on_without_a_match_cancels_on_any_event_of_its_name(shared_url, run):
    event, run_id = _name("anything"), _name("run")

    async def body():
        async with world(shared_url) as w:
            await _admit(w, _cancellable("c", event), {}, run_id)
            keys = await w.keys(event)
            handed = await w.correlator.correlate(event, "whatever", LATER, 5)
            return keys, handed, w.cancels, await w.keys(event)

    keys, handed, cancels, left_over = run(body())
    assert keys == [f"{event}.all.{run_id}.cancel=0"]
    assert handed == 1 and left_over == []
    assert cancels == [(run_id, f"cancelled by event {event}", f"cancel-on.{event}.5")]


def test_a_cancel_on_match_resolves_its_right_side_from_the_input(shared_url, run):
    event, matching, lacking = _name("order"), _name("run"), _name("run")
    wf = _cancellable("c", event, {"left": "order_id", "op": "eq", "right": "input.order_id"}, timeout="1h")

    async def body():
        async with world(shared_url) as w:
            await _admit(w, wf, {"order_id": "o-1"}, matching)
            await _admit(w, wf, {}, lacking)  # no right side: it cannot match, nothing is stored
            [(key, waiter)] = await waiters.waiters_of(w.js, event)
            other = await w.correlator.correlate(event, {"order_id": "o-2"}, LATER, 1)
            same = await w.correlator.correlate(event, {"order_id": "o-1"}, LATER, 2)
            return waiter, other, same, [run_id for run_id, _, _ in w.cancels]

    waiter, other, same, cancelled = run(body())
    assert (waiter.run_id, waiter.right, waiter.since) == (matching, "o-1", _stamp(NOW))
    assert waiter.expires_at == _stamp(NOW + timedelta(hours=1))
    assert (other, same, cancelled) == (0, 1, [matching])


def test_among_thousands_of_eq_waiters_an_event_reads_only_the_index_entries_of_its_value(shared_url, run, monkeypatch):
    event, count = _name("bulk"), 2000
    runs = [f"{event}-r{i}" for i in range(count)]
    read: list[str] = []
    original = reading.stored_batches

    async def counting(js, stream, subject, *args, **kwargs):
        async for msg in original(js, stream, subject, *args, **kwargs):
            read.append(msg.subject)
            yield msg

    async def body():
        async with world(shared_url) as w:
            for start in range(0, count, 250):
                await asyncio.gather(
                    *(
                        w.wait(r, event=event, left="order_id", right=f"o-{i}")
                        for i, r in enumerate(runs)
                        if i >= start and i < start + 250
                    )
                )
            monkeypatch.setattr(reading, "stored_batches", counting)
            handed = await w.correlator.correlate(event, {"order_id": "o-1234"}, LATER, 1)
            monkeypatch.undo()
            return handed, await w.matched(runs[1234]), len(await w.keys(event))

    handed, facts, remaining = run(body(), timeout=120)
    assert handed == 1 and len(facts) == 1
    assert remaining == count - 1
    # The path registry entry and the one waiter of that value: nothing else was read.
    prefix = f"$KV.event_waiters.{event}"
    assert read[0] == f"{prefix}.path.{waiters.digest('order_id')}"
    assert read[1:] == [f"{prefix}.eq.{waiters.digest('order_id')}.{waiters.digest('o-1234')}.{runs[1234]}.s"]


def test_registering_and_removing_a_waiter_twice_is_the_same_as_once(shared_url, run):
    event, run_id = _name("twice"), _name("run")

    async def body():
        async with world(shared_url) as w:
            await w.wait(run_id, step="eq", event=event, left="x", right=42)
            await w.wait(run_id, step="eq", event=event, left="x", right=42)
            await w.wait(run_id, step="gt", event=event, op="gt", right=1)
            await w.wait(run_id, step="gt", event=event, op="gt", right=1)
            registered = await w.keys(event)
            for _ in range(2):
                await waiters.remove_step_waiter(
                    w.js, run_id, RemoveWaiter(event=event, step_id="eq", op="eq", right=42)
                )
                await waiters.remove_step_waiter(
                    w.js, run_id, RemoveWaiter(event=event, step_id="gt", op="gt", right=1)
                )
            return registered, await w.keys(event)

    registered, remaining = run(body())
    assert [key.split(".")[1] for key in registered] == ["cmp", "eq"]
    assert remaining == []


def test_the_sweep_removes_expired_waiters_and_those_of_finished_or_gone_runs(nats_url, run):
    event = _name("sweep")
    live, done, gone, expired, starting = (f"{event}-{n}" for n in ("live", "done", "gone", "expired", "starting"))

    async def body():
        async with world(nats_url) as w:
            await w.wait(live, event=event, right="a")
            await w.wait(done, event=event, op="lt", right=1)
            await w.wait(gone, event=event, right="b")
            await w.wait(expired, event=event, right="c", expires_at=_stamp(NOW))
            await _admit(w, _cancellable("c", event), {}, starting)  # its start not recorded yet
            w.statuses[done] = RunStatus.COMPLETED
            del w.statuses[gone], w.statuses[starting]
            purged = await w.correlator.sweep(LATER)
            return purged, {key.split(".")[-2] for key in await w.keys(event)}

    assert run(body()) == (3, {live, starting})


def test_an_event_published_on_the_stream_reaches_the_waiting_run(nats_url, run):
    event, run_id = "shipped", "r-stream"

    async def body():
        async with world(nats_url) as w:
            await w.correlator.start()
            try:
                await w.wait(run_id, step="ship", event=event, left="id", right=7)
                await w.js.publish(event_subject(event), msgspec.json.encode({"id": 6}))
                ack = await w.js.publish(event_subject(event), msgspec.json.encode({"id": 7}))
                for _ in range(200):
                    if facts := await w.matched(run_id):
                        return ack.seq, facts
                    await asyncio.sleep(0.05)
                return ack.seq, []
            finally:
                await w.correlator.stop()

    seq, facts = run(body())
    assert [(fact.step_id, fact.payload) for fact in facts] == [("ship", ev.EventMatch(data={"id": 7}, seq=seq))]


def test_a_wait_for_event_step_completes_with_the_matching_event_through_the_engine(nats_url, run):
    from harness import EngineHarness

    wf = {
        "name": "awaits-payment",
        "steps": [
            {
                "id": "paid",
                "type": "wait_for_event",
                "config": {
                    "event": "payment_received",
                    "match": {"left": "order_id", "op": "eq", "right": "input.order_id"},
                    "timeout": "1h",
                },
            }
        ],
    }

    async def body():
        async with EngineHarness(nats_url) as h:
            await h.client.register(wf)
            run_id = await h.client.start("awaits-payment", {"order_id": "o-1"})
            await h.wait_step(run_id, "paid", "running")
            await h.client.publish_event("payment_received", {"order_id": "o-2", "amount": 5})
            await h.client.publish_event("payment_received", {"order_id": "o-1", "amount": 7})
            return await h.wait_status(run_id, "completed")

    final = run(body())
    assert final["steps"]["paid"]["output"] == {"order_id": "o-1", "amount": 7}


def test_a_waiter_registered_after_the_correlator_saw_its_event_still_gets_it(nats_url, run):
    # The run records step.wait.started (since) before its outbox stores the waiter:
    # an event published in between reaches the correlator while no waiter is there.
    event, run_id = "late", "r-late"

    async def body():
        async with world(nats_url) as w:
            await w.correlator.start()
            try:
                await w.js.publish(event_subject(event), msgspec.json.encode({"id": 7}))  # before the wait
                since = datetime.now(UTC)
                await w.js.publish(event_subject(event), msgspec.json.encode({"id": 1}))
                ack = await w.js.publish(event_subject(event), msgspec.json.encode({"id": 7}))
                await _until(lambda: _delivered(w, ack.seq))
                await w.wait(run_id, event=event, left="id", right=7, since=_stamp(since))
                return ack.seq, await w.matched(run_id), await w.keys(event)
            finally:
                await w.correlator.stop()

    seq, facts, remaining = run(body())
    assert [fact.payload for fact in facts] == [ev.EventMatch(data={"id": 7}, seq=seq)]
    assert remaining == []


async def _delivered(w: World, seq: int) -> bool:
    info = await w.js.consumer_info("EVENTS", "correlator")
    return info.ack_floor.stream_seq >= seq


async def _until(condition, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.02)
