"""Go-style durations: parsing, formatting, and what is refused."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dagnats.domain.durations import HOUR, MICROSECOND, MILLISECOND, MINUTE, SECOND, format_duration, parse_duration
from dagnats.domain.errors import DagnatsError, InvalidDuration


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("1h2m3.5s", HOUR + 2 * MINUTE + 3 * SECOND + 500 * MILLISECOND),
        ("250ms", 250 * MILLISECOND),
        ("1.5h", 90 * MINUTE),
        ("0", 0),
        ("0s", 0),
        ("30s", 30 * SECOND),
        ("1m30s", 90 * SECOND),
        ("2h", 2 * HOUR),
        ("10us", 10 * MICROSECOND),
        ("10µs", 10 * MICROSECOND),
        ("7ns", 7),
        (".5s", 500 * MILLISECOND),
        ("1.s", SECOND),
        ("+5s", 5 * SECOND),
        ("+0", 0),
        ("1s1h", HOUR + SECOND),
    ],
)
def test_go_duration_strings_parse_to_nanoseconds(text, ns):
    assert parse_duration(text) == ns


def test_integers_are_nanoseconds():
    assert parse_duration(0) == 0
    assert parse_duration(30_000_000_000) == 30 * SECOND


@pytest.mark.parametrize(
    "value",
    [
        "3x",
        "-1s",
        "",
        "1.2.3s",
        "5",
        "s",
        "1 s",
        " 1s",
        "1s ",
        "-0",
        "1h-2m",
        "999999999999h",
        "+",
        -1,
        True,
        False,
        None,
        [1],
        {"s": 1},
    ],
)
def test_malformed_durations_are_refused_with_a_clear_error(value):
    with pytest.raises(InvalidDuration) as info:
        parse_duration(value)
    assert isinstance(info.value, DagnatsError) and isinstance(info.value, ValueError)
    assert "invalid duration" in str(info.value)
    assert '"30s"' in str(info.value)  # says what would work


@pytest.mark.parametrize("value", [1.5, 1.0, 0.0])
def test_floats_are_refused_even_when_integral(value):
    # A float has no unit and no exact nanosecond meaning; JSON definitions
    # must say "1.5s" or 1500000000.
    with pytest.raises(InvalidDuration):
        parse_duration(value)


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "0s"),
        (7, "7ns"),
        (1500, "1.5µs"),
        (250 * MILLISECOND, "250ms"),
        (SECOND, "1s"),
        (90 * SECOND, "1m30s"),
        (HOUR, "1h0m0s"),
        (HOUR + 2 * MINUTE + 3 * SECOND + 500 * MILLISECOND, "1h2m3.5s"),
        (24 * HOUR, "24h0m0s"),
    ],
)
def test_format_prints_durations_the_way_go_does(ns, text):
    assert format_duration(ns) == text


@settings(max_examples=200)
@given(st.integers(min_value=0, max_value=2**63 - 1))
def test_format_then_parse_is_the_identity_on_nanoseconds(ns):
    assert parse_duration(format_duration(ns)) == ns


@settings(max_examples=100)
@given(
    st.integers(0, 1000),
    st.integers(0, 59),
    st.integers(0, 59),
    st.integers(0, 999),
)
def test_composed_strings_parse_to_the_sum_of_their_parts(h, m, s, ms):
    text = f"{h}h{m}m{s}s{ms}ms"
    assert parse_duration(text) == h * HOUR + m * MINUTE + s * SECOND + ms * MILLISECOND
