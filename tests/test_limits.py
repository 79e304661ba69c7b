"""Flow control's pure rules: rate windows, slot pools, and which limits a step or run is under."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dagnats.domain.definition import WorkflowDef, workflow_from_object
from dagnats.domain.limits import (
    RATE,
    SLOTS,
    LimitProblem,
    LimitRequest,
    RateWindow,
    SlotPool,
    Waiter,
    digest,
    holder_id,
    priority_offset,
    rate_admit,
    run_limits,
    slot_acquire,
    slot_release,
    step_limits,
)

# ---- rate windows ------------------------------------------------------------------------------


@st.composite
def rate_requests(draw: st.DrawFn) -> tuple[int, int, list[tuple[int, int]]]:
    """(limit, period_ms, [(time, units)]) with non-decreasing times; units may exceed the limit."""
    limit = draw(st.integers(1, 5))
    period = draw(st.integers(1, 40))
    gaps = draw(st.lists(st.integers(0, 25), min_size=1, max_size=40))
    units = draw(st.lists(st.integers(1, limit + 1), min_size=len(gaps), max_size=len(gaps)))
    times, now = [], 0
    for gap in gaps:
        now += gap
        times.append(now)
    return limit, period, list(zip(times, units, strict=True))


def in_window(log: list[int], now: int, period: int) -> int:
    """Units admitted in the sliding window that ends at ``now``: (now - period, now]."""
    return sum(1 for t in log if now - period < t <= now)


@settings(max_examples=300)
@given(rate_requests())
def test_a_rate_window_grants_exactly_what_fits_and_never_more_than_limit_per_period(case):
    limit, period, requests = case
    window, log = RateWindow(), []
    for now, units in requests:
        decision = rate_admit(window, now, limit, period, units)
        fits = units <= limit and in_window(log, now, period) + units <= limit
        assert decision.granted == fits
        if decision.granted:
            log += [now] * units
        window = decision.window
    for start in log:  # every window of period_ms that begins at an admission
        assert sum(1 for t in log if start <= t < start + period) <= limit


@settings(max_examples=300)
@given(rate_requests())
def test_a_denial_says_the_first_moment_the_same_request_is_granted(case):
    limit, period, requests = case
    window = RateWindow()
    for now, units in requests:
        decision = rate_admit(window, now, limit, period, units)
        if not decision.granted and units <= limit:
            retry = decision.retry_at_ms
            assert retry > now
            assert rate_admit(decision.window, retry, limit, period, units).granted
            assert not rate_admit(decision.window, retry - 1, limit, period, units).granted
        window = decision.window


@settings(max_examples=200)
@given(rate_requests())
def test_more_units_than_the_limit_are_never_granted_and_take_nothing(case):
    limit, period, requests = case
    window = RateWindow()
    for now, units in requests:
        decision = rate_admit(window, now, limit, period, units)
        if units > limit:
            assert not decision.granted
            assert decision.window.starts == tuple(t for t in window.starts if t > now - period)
        window = decision.window


@settings(max_examples=200)
@given(rate_requests())
def test_rate_admit_leaves_its_window_alone_and_keeps_only_what_is_inside_the_period(case):
    limit, period, requests = case
    window = RateWindow()
    for now, units in requests:
        before = msgspec.json.encode(window)
        decision = rate_admit(window, now, limit, period, units)
        assert msgspec.json.encode(window) == before
        assert list(decision.window.starts) == sorted(decision.window.starts)
        assert all(now - period < t <= now for t in decision.window.starts)
        window = decision.window


def test_a_full_window_frees_up_when_its_oldest_admission_leaves():
    window = RateWindow()
    for now in (0, 10, 20):
        window = rate_admit(window, now, 3, 100).window
    denied = rate_admit(window, 50, 3, 100)
    assert (denied.granted, denied.retry_at_ms) == (False, 100)
    two = rate_admit(window, 50, 3, 100, units=2)  # two units: the second-oldest must leave too
    assert (two.granted, two.retry_at_ms) == (False, 110)
    assert rate_admit(window, 100, 3, 100).window.starts == (10, 20, 100)


# ---- slot pools --------------------------------------------------------------------------------

HOLDERS = [f"h{n}" for n in range(6)]


def waiter(holder: str, rank: float = 0.0) -> Waiter:
    return Waiter(holder=holder, rank=rank, run_id="run-" + holder, step_id="s", attempt=1)


def order(w: Waiter) -> tuple[float, str]:
    return (w.rank, w.holder)


_acquires = st.tuples(st.just("acquire"), st.sampled_from(HOLDERS))
_releases = st.tuples(st.just("release"), st.sampled_from(HOLDERS))
_resizes = st.tuples(st.just("resize"), st.integers(1, 4))


@st.composite
def pool_scripts(draw: st.DrawFn, resize: bool = True) -> tuple[int, dict[str, int], list[tuple[str, Any]]]:
    """A pool size, each holder's rank (ties likely) and a script of acquires, releases and resizes."""
    size = draw(st.integers(1, 3))
    ranks = {h: draw(st.integers(0, 3)) for h in HOLDERS}
    ops = _acquires | _releases | _resizes if resize else _acquires | _releases
    return size, ranks, draw(st.lists(ops, max_size=40))


def check_pool(pool: SlotPool) -> None:
    queued = [w.holder for w in pool.queue]
    assert list(pool.queue) == sorted(pool.queue, key=order)
    assert len(queued) == len(set(queued))
    assert not set(queued) & set(pool.holders)


@settings(max_examples=300)
@given(pool_scripts())
def test_a_slot_pool_grants_in_rank_order_and_never_past_its_size(script):
    size, ranks, ops = script
    pool = SlotPool(size=size)
    for op, arg in ops:
        if op == "resize":
            size = arg
        elif op == "acquire":
            me = waiter(arg, ranks[arg])
            decision = slot_acquire(pool, me, size, now_ms=1)
            if arg in pool.holders:  # a retried request: granted, counted once
                assert decision.granted and decision.pool.holders == pool.holders
                assert decision.pool.queue == pool.queue
            else:
                ahead = sum(1 for w in pool.queue if w.holder != arg and order(w) < order(me))
                free = size - len(pool.holders)
                assert decision.granted == (ahead + 1 <= free)
                if decision.granted:
                    assert len(decision.pool.holders) <= size
                    assert size - len(decision.pool.holders) >= ahead  # room is left for each waiter ahead
                else:
                    assert decision.position == ahead + 1 - max(free, 0) >= 1
                    assert me in decision.pool.queue
            pool = decision.pool
        else:
            rest = [w for w in pool.queue if w.holder != arg]
            remaining = len(pool.holders) - (arg in pool.holders)
            new_pool, granted = slot_release(pool, arg, now_ms=2)
            assert granted == rest[: max(0, min(len(rest), pool.size - remaining))]
            assert arg not in new_pool.holders and arg not in [w.holder for w in new_pool.queue]
            if granted:
                assert len(new_pool.holders) <= pool.size
            pool = new_pool
        check_pool(pool)


@settings(max_examples=300)
@given(pool_scripts(resize=False))
def test_a_pool_of_fixed_size_never_leaves_a_slot_idle_while_someone_waits(script):
    size, ranks, ops = script
    pool = SlotPool(size=size)
    for op, holder in ops:
        if op == "acquire":
            pool = slot_acquire(pool, waiter(holder, ranks[holder]), size, now_ms=1).pool
        else:
            pool = slot_release(pool, holder, now_ms=2)[0]
        assert len(pool.holders) <= size
        assert not pool.queue or len(pool.holders) == size


def test_a_retried_acquire_by_a_holder_is_granted_without_counting_twice():
    first = slot_acquire(SlotPool(), waiter("a"), 2, now_ms=5)
    again = slot_acquire(first.pool, waiter("a"), 2, now_ms=9)
    assert again.granted and again.pool.holders == {"a": 5}


def test_a_queued_waiter_that_asks_again_keeps_one_place_in_the_queue():
    pool = slot_acquire(SlotPool(), waiter("a"), 1, now_ms=0).pool
    pool = slot_acquire(pool, waiter("b", 1), 1, now_ms=0).pool
    again = slot_acquire(pool, waiter("b", 1), 1, now_ms=0)
    assert (again.granted, again.position) == (False, 1)
    assert [w.holder for w in again.pool.queue] == ["b"]


def test_a_release_grants_the_lowest_rank_first_and_ties_by_holder_id():
    pool = slot_acquire(SlotPool(), waiter("busy"), 1, now_ms=0).pool
    for holder, rank in [("late", 9), ("zed", 3), ("abe", 3), ("first", 1)]:
        pool = slot_acquire(pool, waiter(holder, rank), 1, now_ms=0).pool
    granted = []
    holding = "busy"
    while pool.queue:
        pool, (head,) = slot_release(pool, holding, now_ms=1)
        granted.append(head.holder)
        holding = head.holder
    assert granted == ["first", "abe", "zed", "late"]


def test_a_newcomer_never_overtakes_a_waiter_of_lower_rank_but_a_lower_rank_goes_ahead():
    pool = slot_acquire(SlotPool(), waiter("busy"), 1, now_ms=0).pool
    pool = slot_acquire(pool, waiter("early", 5), 1, now_ms=0).pool
    later = slot_acquire(pool, waiter("later", 7), 1, now_ms=0)
    assert (later.granted, later.position) == (False, 2)
    urgent = slot_acquire(later.pool, waiter("urgent", 2), 1, now_ms=0)
    assert (urgent.granted, urgent.position) == (False, 1)
    assert [w.holder for w in urgent.pool.queue] == ["urgent", "early", "later"]


def test_the_head_of_the_queue_is_told_position_one():
    pool = slot_acquire(SlotPool(), waiter("busy"), 1, now_ms=0).pool
    head = slot_acquire(pool, waiter("next", 1), 1, now_ms=0)
    assert (head.granted, head.position) == (False, 1)


def test_releasing_a_queued_waiter_drops_it_and_grants_nobody():
    pool = slot_acquire(SlotPool(), waiter("busy"), 1, now_ms=0).pool
    pool = slot_acquire(pool, waiter("a", 1), 1, now_ms=0).pool
    pool = slot_acquire(pool, waiter("b", 2), 1, now_ms=0).pool
    pool, granted = slot_release(pool, "a", now_ms=1)
    assert granted == [] and pool.holders == {"busy": 0}
    assert [w.holder for w in pool.queue] == ["b"]


def test_a_shrunk_pool_grants_nothing_until_its_holders_fit_the_new_size():
    pool = SlotPool()
    for holder in ("a", "b", "c"):
        pool = slot_acquire(pool, waiter(holder), 3, now_ms=0).pool
    shrunk = slot_acquire(pool, waiter("d", 1), 1, now_ms=0)
    assert not shrunk.granted and shrunk.pool.size == 1
    pool, granted = slot_release(shrunk.pool, "a", now_ms=1)
    assert granted == []
    pool, granted = slot_release(pool, "b", now_ms=1)
    assert granted == []
    pool, granted = slot_release(pool, "c", now_ms=1)
    assert [w.holder for w in granted] == ["d"] and pool.holders == {"d": 1}


def test_a_grown_pool_grants_a_newcomer_only_with_room_left_for_every_waiter_ahead():
    pool = slot_acquire(SlotPool(), waiter("busy"), 1, now_ms=0).pool
    pool = slot_acquire(pool, waiter("a", 1), 1, now_ms=0).pool
    pool = slot_acquire(pool, waiter("b", 2), 1, now_ms=0).pool
    cramped = slot_acquire(pool, waiter("c", 3), 3, now_ms=0)  # 2 free slots, 2 waiters ahead
    assert (cramped.granted, cramped.position) == (False, 1)
    roomy = slot_acquire(pool, waiter("c", 3), 4, now_ms=0)
    assert roomy.granted and [w.holder for w in roomy.pool.queue] == ["a", "b"]
    head = slot_acquire(roomy.pool, waiter("a", 1), 4, now_ms=0)  # the head, asking again, gets its room
    assert head.granted
    pool, granted = slot_release(cramped.pool, "nobody", now_ms=1)  # any release fills the new room
    assert [w.holder for w in granted] == ["a", "b"]


def test_holder_ids_name_the_run_or_one_attempt_of_one_step_or_element():
    assert holder_id("r1") == "r1"
    assert holder_id("r1", "charge", 2) == "r1.charge.2"
    assert holder_id("r1", "each", 1, 0) == "r1.each.i0.1"
    ids = {holder_id("r1", s, a, i) for s in ("a", "b") for a in (1, 2) for i in (None, 0, 1)}
    assert len(ids) == 12


# ---- which limits a step is under --------------------------------------------------------------


def workflow(*steps: dict[str, Any], **fields: Any) -> WorkflowDef:
    return workflow_from_object({"name": "wf", "steps": list(steps), **fields})


def limits_of(step: dict[str, Any], data: Any = None, since_ms: int = 7) -> list[LimitRequest]:
    defn = workflow({"id": "s", "task": "charge", **step})
    return step_limits(defn, defn.step("s"), data, since_ms)


def test_a_step_without_limits_passes_none():
    assert limits_of({}) == []


def test_a_rate_limit_is_one_window_per_task():
    (request,) = limits_of({"rate_limit": {"limit": 5, "period": "1m"}})
    assert (request.kind, request.key, request.size, request.period_ms, request.units) == (
        RATE,
        "rate.charge",
        5,
        60_000,
        1,
    )
    assert request.reason == "rate_limit of task charge (5 per 60000 ms)"
    (tiny,) = limits_of({"rate_limit": {"limit": 1, "period": 1}})  # 1 ns
    assert tiny.period_ms == 1


def keyed(units: int = 1) -> dict[str, Any]:
    return {"keyed_rate_limit": {"key": "customer.id", "limit": 10, "period": "1s", "units": units}}


def test_a_keyed_rate_limit_has_one_window_per_value_of_its_key():
    (request,) = limits_of(keyed(units=3), {"customer": {"id": "acme"}})
    assert (request.kind, request.size, request.period_ms, request.units) == (RATE, 10, 1000, 3)
    assert request.key == f"rate.charge.{digest('acme')}"
    assert request.reason == "keyed_rate_limit of task charge for customer.id=acme"


def test_the_digest_of_a_key_value_is_pinned():
    # Windows live in KV under these keys: a changed digest would reset every window.
    assert digest("acme") == "8c3723ac2be0a966c541"
    assert len(digest("")) == 20


@settings(max_examples=200)
@given(st.text(max_size=12), st.text(max_size=12))
def test_distinct_key_values_get_distinct_windows_and_equal_ones_the_same(first, second):
    (a,) = limits_of(keyed(), {"customer": {"id": first}})
    (b,) = limits_of(keyed(), {"customer": {"id": second}})
    assert (a.key == b.key) == (first == second)
    assert a.key.startswith("rate.charge.") and a.key != "rate.charge"


def test_a_structured_key_value_is_keyed_by_its_canonical_json():
    (a,) = limits_of(keyed(), {"customer": {"id": {"x": 1, "y": 2}}})
    (b,) = limits_of(keyed(), {"customer": {"id": {"y": 2, "x": 1}}})
    assert a.key == b.key == "rate.charge." + digest('{"x":1,"y":2}')


@pytest.mark.parametrize("data", [None, {}, {"customer": {}}, {"customer": "acme"}, [1, 2]])
def test_a_keyed_rate_limit_without_its_key_in_the_input_is_a_limit_problem(data):
    with pytest.raises(LimitProblem, match=r"^keyed_rate_limit: the step's input has no 'customer\.id'$"):
        limits_of(keyed(), data)
    assert issubclass(LimitProblem, ValueError)


def test_max_task_concurrency_is_a_pool_per_task_shared_by_every_workflow():
    (request,) = limits_of({"max_task_concurrency": 3}, since_ms=1234)
    assert (request.kind, request.key, request.size, request.rank) == (SLOTS, "task.charge", 3, 1234)
    assert request.reason == "max_task_concurrency 3 of task charge"
    other = workflow_from_object({"name": "other", "steps": [{"id": "x", "task": "charge", "max_task_concurrency": 3}]})
    assert step_limits(other, other.step("x"), None, 0)[0].key == "task.charge"


def test_a_step_singleton_is_a_pool_of_one_per_workflow_and_step():
    (request,) = limits_of({"singleton": True}, since_ms=99)
    assert (request.kind, request.key, request.size, request.rank) == (SLOTS, "single.wf.s", 1, 99)
    assert request.reason == "singleton step s of workflow wf"


def test_every_limit_of_a_step_is_asked_for_in_one_admission():
    requests = limits_of({"rate_limit": {"limit": 2, "period": "1s"}, "max_task_concurrency": 1, "singleton": True})
    assert [(r.kind, r.key) for r in requests] == [
        (RATE, "rate.charge"),
        (SLOTS, "task.charge"),
        (SLOTS, "single.wf.s"),
    ]


# ---- which limits a run is under ---------------------------------------------------------------

PRIORITY = {"key": "tier", "rules": {"gold": 60, "bronze": -30, "1": 5, "true": 7}, "default_offset": 10}


@pytest.mark.parametrize(
    ("data", "offset"),
    [
        ({"tier": "gold"}, 60),
        ({"tier": "bronze"}, -30),
        ({"tier": "tin"}, 10),  # not in the rules: the default
        ({}, 10),  # no key at all: the default
        (None, 10),
        ({"tier": 1}, 5),  # a value that is not a string matches by its JSON text
        ({"tier": True}, 7),
    ],
)
def test_a_run_moves_ahead_by_its_priority_rule(data, offset):
    assert priority_offset(workflow({"id": "s", "task": "t"}, priority=PRIORITY), data) == offset


def test_a_workflow_without_priority_moves_nobody():
    assert priority_offset(workflow({"id": "s", "task": "t"}), {"tier": "gold"}) == 0


def test_only_max_runs_limits_a_run():
    assert run_limits(workflow({"id": "s", "task": "t"}), None, 0) == []
    assert run_limits(workflow({"id": "s", "task": "t"}, concurrency={"max_steps": 2}), None, 0) == []
    (request,) = run_limits(workflow({"id": "s", "task": "t"}, concurrency={"max_runs": 3}), None, 5000)
    assert (request.kind, request.key, request.size, request.rank) == (SLOTS, "runs.wf", 3, 5000)
    assert request.reason == "concurrency.max_runs 3 of workflow wf"


@settings(max_examples=200)
@given(st.integers(0, 10**13), st.sampled_from(["gold", "bronze", "tin"]), st.integers(-(10**6), 10**6))
def test_a_run_ranks_by_creation_less_its_offset_in_seconds(created_ms, tier, later_ms):
    defn = workflow({"id": "s", "task": "t"}, concurrency={"max_runs": 1}, priority=PRIORITY)
    (request,) = run_limits(defn, {"tier": tier}, created_ms)
    assert request.rank == created_ms - priority_offset(defn, {"tier": tier}) * 1000
    (gold,) = run_limits(defn, {"tier": "gold"}, created_ms + later_ms)
    (tin,) = run_limits(defn, {"tier": "tin"}, created_ms)
    assert (gold.rank < tin.rank) == (later_ms < 50_000)  # gold is 50 s ahead of tin
