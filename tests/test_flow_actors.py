"""ConcurrencyActor, RateLimitActor and FlowControl on an in-memory limit bucket (entries
with revisions, written by compare-and-set) and a fake clock: the order of checks, what a
denial holds, engines that share a bucket, and the reaper."""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime

import msgspec
import pytest

from dagnats.actors.flow import REAP_EVERY, ConcurrencyActor, FlowControl, Flush, RateLimitActor
from dagnats.domain import events as ev
from dagnats.domain.actions import Acquire, Release
from dagnats.domain.definition import StepDef, WorkflowDef
from dagnats.domain.errors import WrongLastSequence
from dagnats.domain.limits import RATE, SLOTS, LimitRequest, RateWindow, SlotPool, holder_id

from fakes import FakeClock
from memory_ports import MemoryHistory, MemoryLimits

SLOT = LimitRequest(SLOTS, "task.t", 2, reason="max_task_concurrency 2 of task t")
RATE_1S = LimitRequest(RATE, "rate.t", 3, 1000, reason="rate_limit of task t (3 per 1000 ms)")


def pool(limits: MemoryLimits, key: str = "task.t") -> SlotPool:
    value, _ = limits.load(key)
    return msgspec.json.decode(value, type=SlotPool) if value else SlotPool()


def window(limits: MemoryLimits, key: str = "rate.t") -> RateWindow:
    value, _ = limits.load(key)
    return msgspec.json.decode(value, type=RateWindow) if value else RateWindow()


class Flow:
    """One engine's flow control: its two actors over a shared bucket."""

    def __init__(self, limits: MemoryLimits, clock: FakeClock) -> None:
        self.slots = ConcurrencyActor.start(limits, clock)
        self.rates = RateLimitActor.start(limits, clock)
        self.control = FlowControl(self.slots, self.rates, clock)

    def settle(self) -> None:
        """Every message told so far has been handled (and the flushes they asked for)."""
        for _ in range(3):
            self.slots.ask(Flush())
            self.rates.ask(Flush())

    def stop(self) -> None:
        self.slots.stop()
        self.rates.stop()


@pytest.fixture
def clock():
    return FakeClock(datetime(2026, 1, 1, tzinfo=UTC))


@pytest.fixture
def limits():
    return MemoryLimits(MemoryHistory())


@pytest.fixture
def flow(limits, clock):
    f = Flow(limits, clock)
    yield f
    f.stop()


def ask(flow: Flow, run: str, *requests: LimitRequest, step: str = "s", attempt: int = 1):
    return flow.control.acquire(Acquire(requests, holder_id(run, step, attempt), step, attempt))


def test_slots_are_granted_up_to_the_size_then_queued_in_order(flow, limits):
    answers = [ask(flow, f"r{i}", SLOT) for i in range(4)]
    assert [a.granted for a in answers] == [True, True, False, False]
    assert answers[0].holds == ("task.t",)
    assert [a.position for a in answers[2:]] == [1, 2]
    assert "all 2 in use, queued at 2" in answers[3].reason
    assert sorted(pool(limits).holders) == ["r0.s.1", "r1.s.1"]
    assert ask(flow, "r0", SLOT).granted  # asking again: still one holder
    assert len(pool(limits).holders) == 2


def test_a_release_grants_the_head_of_the_queue_and_wakes_its_run(flow, limits):
    for i in range(3):
        ask(flow, f"r{i}", SLOT)
    flow.control.release([Release("task.t", "r0.s.1")])
    flow.settle()
    assert sorted(pool(limits).holders) == ["r1.s.1", "r2.s.1"]
    (woken,) = limits.woken
    assert isinstance(woken, ev.TimerFired) and woken.run_id == "r2"
    assert (woken.step_id, woken.attempt, woken.payload.kind) == ("s", 1, "limit")
    assert ask(flow, "r2", SLOT).granted  # the woken run asks again and is granted


def test_a_rate_is_asked_only_once_every_slot_is_granted_and_a_denial_keeps_the_slots(flow, limits, clock):
    for i in range(3):
        assert ask(flow, f"r{i}", RATE_1S).granted
    queued = ask(flow, "q", LimitRequest(SLOTS, "task.t", 0), RATE_1S)  # no room in the pool
    assert not queued.granted and queued.key == "task.t"
    assert window(limits).used() == 3 and "q.s.1" not in [e[1] for e in window(limits).entries]
    denied = ask(flow, "r3", SLOT, RATE_1S)
    assert not denied.granted and denied.key == "rate.t" and denied.holds == ("task.t",)
    now_ms = int(clock.now().timestamp() * 1000)
    assert denied.retry_at_ms == now_ms + 1000
    clock.advance(1.0)
    granted = ask(flow, "r3", SLOT, RATE_1S)
    assert granted.granted and granted.holds == ("task.t",)
    assert [e[1] for e in window(limits).entries] == ["r3.s.1"]
    assert list(pool(limits).holders) == ["r3.s.1"]


def test_two_engines_sharing_the_bucket_never_hold_more_than_the_size(limits, clock):
    """Each save is checked against the size; threads acquire and release through two
    engines' actors at once, so their compare-and-set conflicts are real."""
    size, most = 3, [0]
    save = limits.save

    def checked(key: str, value: bytes, revision: int) -> int:
        held = len(msgspec.json.decode(value, type=SlotPool).holders)
        most[0] = max(most[0], held)
        return save(key, value, revision)

    limits.save = checked  # type: ignore[method-assign]
    engines = [Flow(limits, clock), Flow(limits, clock)]
    request = LimitRequest(SLOTS, "task.t", size)
    granted: list[str] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        rng = random.Random(n)
        for i in range(25):
            engine = engines[rng.randrange(2)]
            run = f"c{n}x{i}"
            if engine.control.acquire(Acquire((request,), holder_id(run, "s", 1), "s", 1)).granted:
                with lock:
                    granted.append(run)
                engine.control.release([Release("task.t", holder_id(run, "s", 1))])

    try:
        threads = [threading.Thread(target=client, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for engine in engines:
            engine.settle()
    finally:
        for engine in engines:
            engine.stop()
    assert most[0] <= size
    assert granted  # the queue drained as slots came back: some were granted at once
    assert len(pool(limits).holders) <= size


def test_a_conflicting_write_is_retried_on_the_fresh_value(flow, limits):
    ask(flow, "r0", SLOT)
    # Another engine writes behind this actor's cache.
    value, revision = limits.load("task.t")
    other = msgspec.structs.replace(msgspec.json.decode(value, type=SlotPool), holders={"r0.s.1": 1, "x.s.1": 2})
    limits.save("task.t", msgspec.json.encode(other), revision)
    assert not ask(flow, "r1", SLOT).granted  # the pool was full: the actor reread it
    with pytest.raises(WrongLastSequence):
        limits.save("task.t", b"{}", revision)


DEF = WorkflowDef(name="w", steps=(StepDef(id="s", task="t", max_task_concurrency=1),))


def _record(limits: MemoryLimits, run_id: str, *events: ev.Event) -> None:
    body = b"[" + b",".join(ev.encode_event(e) for e in events) + b"]"
    limits.history.append(run_id, body, 0, f"{run_id}.start")


def _started(run_id: str) -> ev.WorkflowStarted:
    stamp = ev.format_timestamp(datetime(2026, 1, 1, tzinfo=UTC))
    return ev.WorkflowStarted(
        run_id=run_id, timestamp=stamp, payload=ev.RunStart(workflow_def=DEF, input=None), id="workflow.started"
    )


def test_the_reaper_frees_slots_no_run_holds_and_wakes_grants_never_taken(flow, limits, clock):
    single, other = LimitRequest(SLOTS, "task.t", 1), LimitRequest(SLOTS, "task.u", 1)
    assert ask(flow, "ghost", single).granted  # its engine died before recording anything
    assert not ask(flow, "alive", single).granted  # queued behind it
    _record(limits, "alive", _started("alive"))
    held = ev.StepHeld(run_id="alive", step_id="s", attempt=1, timestamp=_started("alive").timestamp, id="held")
    limits.history.append("alive", b"[" + ev.encode_event(held) + b"]", 1, "alive.held")  # waiting for admission
    clock.advance(REAP_EVERY / 2)
    assert ask(flow, "young", other).granted  # no run either, but granted 5 s later
    clock.advance(REAP_EVERY / 2)  # the first round: the ghost's slot is REAP_AFTER old
    flow.settle()
    flow.settle()
    assert list(pool(limits).holders) == ["alive.s.1"]  # the ghost's slot went to the queue's head
    assert [w.run_id for w in limits.woken] == ["alive"]
    assert "young.s.1" in pool(limits, "task.u").holders  # too young to question yet
    # The wake is lost (say): once its grant is REAP_AFTER old and the run still waits,
    # the next round wakes it again (and frees the young ghost's slot).
    clock.advance(REAP_EVERY)
    flow.settle()
    flow.settle()
    assert pool(limits, "task.u").holders == {}
    assert [w.run_id for w in limits.woken] == ["alive", "alive"]
    assert list(pool(limits).holders) == ["alive.s.1"]
