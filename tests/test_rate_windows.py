"""Flow control's rate windows, pure: at most ``limit`` units in any period, a holder counted
once however often it asks, and who was told to wait (for the ``dagnats limits`` listing)."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dagnats.domain.limits import WAITING_KEPT_MS, RateWindow, rate_admit

# ---- anonymous requests (no holder): each one counts ---------------------------------------------


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


def check_window(window: RateWindow, now: int, limit: int, period: int) -> None:
    """What a window keeps: admissions inside the period that ends now, oldest first, within the limit."""
    assert list(window.entries) == sorted(window.entries)
    assert all(now - period < when <= now for when, _, _ in window.entries)
    assert window.used() == sum(units for _, _, units in window.entries) <= limit
    assert (window.limit, window.period_ms) == (limit, period)


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
            assert (now, "", units) in decision.window.entries
        check_window(decision.window, now, limit, period)
        assert decision.window.used() == in_window(log, now, period)
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
            assert (decision.granted, decision.retry_at_ms) == (False, 0)  # no time would do
            assert decision.window.entries == tuple(e for e in window.entries if e[0] > now - period)
        window = decision.window


@settings(max_examples=200)
@given(rate_requests())
def test_rate_admit_leaves_its_window_alone(case):
    limit, period, requests = case
    window = RateWindow()
    for index, (now, units) in enumerate(requests):
        before = msgspec.json.encode(window)
        decision = rate_admit(window, now, limit, period, units, holder=f"h{index % 3}")
        assert msgspec.json.encode(window) == before
        window = decision.window


def test_a_full_window_frees_up_when_its_oldest_admission_leaves():
    window = RateWindow()
    for now in (0, 10, 20):
        window = rate_admit(window, now, 3, 100).window
    denied = rate_admit(window, 50, 3, 100)
    assert (denied.granted, denied.retry_at_ms) == (False, 100)
    two = rate_admit(window, 50, 3, 100, units=2)  # two units: the second-oldest must leave too
    assert (two.granted, two.retry_at_ms) == (False, 110)
    assert rate_admit(window, 100, 3, 100).window.entries == ((10, "", 1), (20, "", 1), (100, "", 1))


def test_units_count_by_weight_not_by_admission():
    window = rate_admit(RateWindow(), 0, 5, 100, units=3, holder="a").window
    assert window.entries == ((0, "a", 3),) and window.used() == 3
    assert rate_admit(window, 1, 5, 100, units=2, holder="b").granted
    denied = rate_admit(window, 1, 5, 100, units=3, holder="c")
    assert (denied.granted, denied.retry_at_ms) == (False, 100)


# ---- holders asking again ---------------------------------------------------------------------------

HOLDERS = ["a", "b", "c", "d"]


@st.composite
def holder_scripts(draw: st.DrawFn) -> tuple[int, int, dict[str, int], list[tuple[int, str]]]:
    """(limit, period_ms, each holder's units, [(time, holder)]): holders ask, and ask again."""
    limit = draw(st.integers(1, 4))
    period = draw(st.integers(1, 40))
    units = {h: draw(st.integers(1, limit)) for h in HOLDERS}
    asks, now = [], 0
    for _ in range(draw(st.integers(1, 40))):
        now += draw(st.integers(0, 15))
        asks.append((now, draw(st.sampled_from(HOLDERS))))
    return limit, period, units, asks


@settings(max_examples=400)
@given(holder_scripts())
def test_a_holder_asking_again_is_counted_once_and_no_period_holds_more_than_the_limit(script):
    limit, period, units, asks = script
    window = RateWindow()
    last: dict[str, int] = {}  # each holder's latest admission: the one it goes with
    for now, me in asks:
        others = sum(units[h] for h, t in last.items() if h != me and t > now - period)
        decision = rate_admit(window, now, limit, period, units[me], holder=me)
        assert decision.granted == (others + units[me] <= limit)
        if decision.granted:
            last[me] = now  # its earlier admission, if any, moves here
        window = decision.window
        check_window(window, now, limit, period)
        # exactly each holder's latest admission still inside the period, once
        assert window.entries == tuple(sorted((t, h, units[h]) for h, t in last.items() if t > now - period))
        for start in last.values():  # and no period holds more than the limit of them
            assert sum(units[h] for h, t in last.items() if start <= t < start + period) <= limit


@settings(max_examples=300)
@given(holder_scripts())
def test_a_holder_told_to_wait_is_granted_again_exactly_when_it_was_told(script):
    limit, period, units, asks = script
    window = RateWindow()
    for now, me in asks:
        decision = rate_admit(window, now, limit, period, units[me], holder=me)
        if not decision.granted:
            retry = decision.retry_at_ms
            assert retry > now
            assert rate_admit(decision.window, retry, limit, period, units[me], holder=me).granted
            assert not rate_admit(decision.window, retry - 1, limit, period, units[me], holder=me).granted
        window = decision.window


def test_a_holder_asking_again_with_room_moves_its_admission_to_now():
    window = rate_admit(RateWindow(), 0, 2, 100, holder="a").window
    again = rate_admit(window, 30, 2, 100, holder="a")
    assert again.granted and again.window.entries == ((30, "a", 1),)


def test_a_holder_asking_again_without_room_keeps_its_admission_where_it_was():
    window = rate_admit(RateWindow(), 0, 2, 100, units=1, holder="a").window
    window = rate_admit(window, 10, 2, 100, units=1, holder="b").window
    again = rate_admit(window, 20, 2, 100, units=2, holder="a")  # more units now: b's leave no room
    assert not again.granted and again.window.entries == ((0, "a", 1), (10, "b", 1))
    assert again.retry_at_ms == 110  # when b's admission leaves (a's own does not count against it)


def test_a_holder_whose_admission_left_the_window_counts_like_a_newcomer():
    window = rate_admit(RateWindow(), 0, 1, 100, holder="a").window
    assert not rate_admit(window, 99, 1, 100, holder="b").granted
    assert rate_admit(window, 100, 1, 100, holder="b").granted
    assert rate_admit(window, 100, 1, 100, holder="a").window.entries == ((100, "a", 1),)


# ---- who waits ----------------------------------------------------------------------------------------


def since_of(window: RateWindow) -> dict[str, int]:
    """Each waiting holder and when it was first told to wait."""
    return {holder: since for holder, since, _ in window.waiting}


@settings(max_examples=300)
@given(holder_scripts())
def test_the_window_lists_each_holder_told_to_wait_once_since_it_was_first_told(script):
    limit, period, units, asks = script  # within WAITING_KEPT_MS: nobody is forgotten here
    window = RateWindow()
    waiting: dict[str, int] = {}
    for now, me in asks:
        decision = rate_admit(window, now, limit, period, units[me], holder=me)
        if decision.granted:
            waiting.pop(me, None)
        else:
            waiting.setdefault(me, now)
        window = decision.window
        assert len(window.waiting) == len({w[0] for w in window.waiting})
        assert since_of(window) == waiting


def test_a_waiting_holder_keeps_its_first_since_and_leaves_the_list_when_granted():
    window = rate_admit(RateWindow(), 0, 1, 100, holder="a").window
    window = rate_admit(window, 10, 1, 100, holder="b").window
    window = rate_admit(window, 60, 1, 100, holder="b").window
    assert window.waiting == (("b", 10, 60),)
    granted = rate_admit(window, 100, 1, 100, holder="b")
    assert granted.granted and granted.window.waiting == ()


def test_an_anonymous_request_is_not_listed_as_waiting():
    window = rate_admit(RateWindow(), 0, 1, 100).window
    assert rate_admit(window, 1, 1, 100).window.waiting == ()


def test_a_request_no_time_can_grant_is_listed_as_waiting():
    denied = rate_admit(RateWindow(), 5, 2, 100, units=3, holder="big")
    assert (denied.granted, denied.retry_at_ms, denied.window.waiting) == (False, 0, (("big", 5, 5),))


@pytest.mark.parametrize(("period", "kept"), [(1_000, WAITING_KEPT_MS), (120_000, 1_200_000)])
def test_a_waiter_is_forgotten_after_ten_periods_or_waiting_kept_ms_whichever_is_longer(period, kept):
    window = rate_admit(RateWindow(), 0, 1, period, holder="a").window
    window = rate_admit(window, 1, 1, period, holder="gone").window
    assert since_of(window) == {"gone": 1}
    full = rate_admit(window, kept, 1, period, holder="a").window  # the window is a's again
    assert since_of(full) == {"gone": 1}
    later = rate_admit(full, kept + 1, 1, period, holder="b").window
    assert since_of(later) == {"b": kept + 1}


def test_a_waiter_that_keeps_asking_stays_listed():
    window = rate_admit(RateWindow(), 0, 1, 60_000, holder="a").window
    for now in range(0, WAITING_KEPT_MS + 60_000, 15_000):  # a keeps its token; b asks every 15 s
        window = rate_admit(window, now, 1, 60_000, holder="b").window
        window = rate_admit(window, now, 1, 60_000, holder="a").window
        assert since_of(window) == {"b": 0}, now


# ---- the rule and the stored value --------------------------------------------------------------------


def test_a_window_records_the_rule_it_was_last_asked_under_and_keeps_its_description():
    window = RateWindow(about="rate_limit of task charge")
    granted = rate_admit(window, 0, 5, 1_000, holder="a").window
    assert (granted.limit, granted.period_ms, granted.about) == (5, 1_000, "rate_limit of task charge")
    denied = rate_admit(granted, 1, 1, 60_000, holder="b").window  # the rule changed: the new one
    assert (denied.limit, denied.period_ms, denied.about) == (1, 60_000, "rate_limit of task charge")


def test_a_window_is_stored_as_compact_json_and_read_back_the_same():
    window = rate_admit(RateWindow(), 7, 2, 100, units=2, holder="r.s.1").window
    window = rate_admit(window, 8, 2, 100, holder="r.t.1").window
    data = msgspec.json.encode(window)
    assert data == b'{"entries":[[7,"r.s.1",2]],"waiting":[["r.t.1",8,8]],"limit":2,"period_ms":100}'
    assert msgspec.json.decode(data, type=RateWindow) == window
    assert msgspec.json.encode(RateWindow()) == b"{}"
