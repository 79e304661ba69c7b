"""Flow control's pure rules: slot pools, who holds them, and which limits a step or run is under
(rate windows: test_rate_windows.py)."""

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
    SlotPool,
    Waiter,
    digest,
    holder_id,
    priority_offset,
    run_limits,
    slot_acquire,
    slot_keys,
    slot_release,
    step_limits,
)

# ---- slot pools --------------------------------------------------------------------------------

HOLDERS = [f"h{n}" for n in range(6)]


def waiter(holder: str, rank: float = 0.0) -> Waiter:
    return Waiter(holder, rank)


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
    joined: dict[str, int] = {}  # when each queued waiter joined the queue
    for now, (op, arg) in enumerate(ops):
        if op == "resize":
            size = arg
        elif op == "acquire":
            me = waiter(arg, ranks[arg])
            decision = slot_acquire(pool, me, size, now_ms=now)
            if arg in pool.holders:  # a retried request: granted, counted once
                assert decision.granted and decision.pool.holders == pool.holders
                assert decision.pool.queue == pool.queue
            else:
                ahead = sum(1 for w in pool.queue if w.holder != arg and order(w) < order(me))
                free = size - len(pool.holders)
                assert decision.granted == (ahead + 1 <= free)
                if decision.granted:
                    assert decision.pool.holders == {**pool.holders, arg: now}
                    assert len(decision.pool.holders) <= size
                    assert size - len(decision.pool.holders) >= ahead  # room is left for each waiter ahead
                    joined.pop(arg, None)
                else:
                    assert decision.position == ahead + 1 - max(free, 0) >= 1
                    since = joined.setdefault(arg, now)  # asking again keeps the time it joined
                    assert Waiter(arg, ranks[arg], since) in decision.pool.queue
            pool = decision.pool
        else:
            rest = [w for w in pool.queue if w.holder != arg]
            remaining = len(pool.holders) - (arg in pool.holders)
            new_pool, granted = slot_release(pool, arg, now_ms=now)
            assert granted == rest[: max(0, min(len(rest), pool.size - remaining))]
            assert arg not in new_pool.holders and arg not in [w.holder for w in new_pool.queue]
            assert all(new_pool.holders[w.holder] == now for w in granted)
            if granted:
                assert len(new_pool.holders) <= pool.size
            for gone in [arg, *(w.holder for w in granted)]:
                joined.pop(gone, None)
            pool = new_pool
        check_pool(pool)
        assert {w.holder: w.since for w in pool.queue} == joined


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


def test_a_queued_waiter_that_asks_again_keeps_one_place_in_the_queue_and_the_time_it_joined():
    pool = slot_acquire(SlotPool(), waiter("a"), 1, now_ms=0).pool
    pool = slot_acquire(pool, waiter("b", 1), 1, now_ms=10).pool
    again = slot_acquire(pool, Waiter("b", 1, since=99), 1, now_ms=25)  # the since it brings is ignored
    assert (again.granted, again.position) == (False, 1)
    assert again.pool.queue == (Waiter("b", 1, 10),)
    granted = slot_release(again.pool, "a", now_ms=40)[0]
    assert granted.holders == {"b": 40} and granted.queue == ()


def test_a_newcomer_joins_the_queue_at_the_time_it_asks():
    pool = slot_acquire(SlotPool(), waiter("a"), 1, now_ms=0).pool
    assert slot_acquire(pool, Waiter("b", 1, since=3), 1, now_ms=17).pool.queue == (Waiter("b", 1, 17),)


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


def test_a_pool_keeps_the_rule_it_was_described_by_and_takes_the_size_it_is_asked_with():
    pool = SlotPool(size=3, about="max_task_concurrency 3 of task charge")
    decision = slot_acquire(pool, waiter("a"), 2, now_ms=0)
    assert (decision.pool.size, decision.pool.about) == (2, "max_task_concurrency 3 of task charge")
    assert slot_release(decision.pool, "a", now_ms=1)[0].about == pool.about


def test_a_pool_is_stored_as_compact_json_its_queue_as_arrays():
    pool = slot_acquire(SlotPool(), waiter("r1"), 1, now_ms=5).pool
    pool = slot_acquire(pool, Waiter("r2", 1.5), 1, now_ms=6).pool
    data = msgspec.json.encode(pool)
    assert data == b'{"holders":{"r1":5},"queue":[["r2",1.5,6]]}'
    assert msgspec.json.decode(data, type=SlotPool) == pool
    assert msgspec.json.decode(b'{"queue":[["r3",2.0]]}', type=SlotPool).queue == (Waiter("r3", 2.0, 0),)


def test_holder_ids_name_the_run_or_one_attempt_of_one_step_or_element():
    assert holder_id("r1") == "r1"
    assert holder_id("r1", "charge", 2) == "r1.charge.2"
    assert holder_id("r1", "each", 1, 0) == "r1.each.i0.1"
    ids = {holder_id("r1", s, a, i) for s in ("a", "b") for a in (1, 2) for i in (None, 0, 1)}
    assert len(ids) == 12


def test_a_waiter_reads_its_run_and_step_from_its_holder_id():
    assert (Waiter("r1", 0).run_id, Waiter("r1", 0).step) == ("r1", ("", 0, None))
    assert (Waiter("r1.charge.2", 0).run_id, Waiter("r1.charge.2", 0).step) == ("r1", ("charge", 2, None))
    assert (Waiter("r1.each.i3.1", 0).run_id, Waiter("r1.each.i3.1", 0).step) == ("r1", ("each", 1, 3))


_ids = st.from_regex(r"[A-Za-z0-9_-]{1,12}", fullmatch=True)


@settings(max_examples=300)
@given(_ids, _ids, st.integers(1, 10**6), st.none() | st.integers(0, 10**4))
def test_a_waiter_parses_back_any_holder_id(run_id, step_id, attempt, instance):
    step = Waiter(holder_id(run_id, step_id, attempt, instance), 1.0)
    assert (step.run_id, step.step) == (run_id, (step_id, attempt, instance))
    run = Waiter(holder_id(run_id), 1.0)
    assert (run.run_id, run.step) == (run_id, ("", 0, None))


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


def test_slot_keys_are_the_pools_of_a_step_without_its_input():
    defn = workflow(
        {"id": "all", "task": "charge", "singleton": True, "max_task_concurrency": 2, **keyed()},
        {"id": "rated", "task": "mail", "rate_limit": {"limit": 1, "period": "1s"}, **keyed()},
        {"id": "free", "task": "free"},
    )
    assert slot_keys(defn, defn.step("all")) == ("task.charge", "single.wf.all")  # a keyed rate needs no key here
    assert slot_keys(defn, defn.step("rated")) == ()
    assert slot_keys(defn, defn.step("free")) == ()
    data = {"customer": {"id": "acme"}}
    slots = tuple(r.key for r in step_limits(defn, defn.step("all"), data, 0) if r.kind == SLOTS)
    assert slot_keys(defn, defn.step("all")) == slots


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
